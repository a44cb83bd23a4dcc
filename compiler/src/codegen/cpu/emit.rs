//! Translation of Kernel IR statements and expressions to Cranelift IR.
//!
//! Values are uniform (one f32 for all lanes) or varying (an f32x4 of four consecutive
//! iterations of the enclosing vector loop); an operation on a mix splats the uniform side.
//! A load whose index is affine in the vector variable with coefficient 1 is one vector
//! load, coefficient 0 a scalar load, anything else four scalar loads (a gather). A
//! reduction over one contiguous variable in scalar context is itself vectorised (four
//! partial accumulators, combined at the end, then a scalar tail); inside a vector loop whose
//! lanes read far apart (a mean over each channel's plane, the channels in the lanes), each
//! lane gets such a reduction instead of a gather per step (EfficientNet-B0's
//! squeeze-excitation means 0.38 -> 0.18 ms). In bounds-checked mode
//! every access is preceded by a range check that, on failure, reports the buffer and index
//! to the kernel's violation record and skips the access (a load yields 0). Scratch arrays
//! are stack slots of the entry function, reused by each grid iteration it runs.
//!
//! A loop whose body compares its own variable with constants (a concat's parts) is split
//! into one loop per interval on which the comparisons are decided ([`splitting`]).
//!
//! A vector loop whose body clamps or bounds-checks positions that move with the lanes (a
//! padded window) is versioned ([`versioning`]): each vector iteration tests once whether
//! the clamps and conditions can fire anywhere in it and, where they cannot, runs a body
//! without them, whose reads are then plain vector loads. Non-affine index subexpressions
//! (an unflattened grid index, a clamped row) are computed once at the top of the loop
//! binding their innermost variable rather than in every iteration of the loops inside. A
//! reduction keeps four partial results along its innermost variable (two vectors for a
//! vectorised one), so consecutive steps do not wait for each other, and accumulates `a·b`
//! with fused multiply-adds where the host has them.

use super::math::Math;
use super::splitting;
use super::versioning::{self, Check};
use crate::kernel::{
    Binary, Body, BufId, CmpOp, Cond, Epilogue, Expr, Index, Kernel, Pred, ReduceOp, ScalarId,
    Stmt, TableData, Unary, Var,
};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, BlockArg, FuncRef, GlobalValue, InstBuilder, MemFlagsData, Type, Value,
};
use cranelift_frontend::{FunctionBuilder, Variable};
use std::collections::{BTreeSet, HashMap};

pub const LANES: i64 = 4;
/// Partial results a reduction keeps along its innermost variable.
const UNROLL: usize = 4;

/// A float value: the same for every lane, or one per lane.
#[derive(Clone, Copy, Debug)]
pub enum Val {
    Uniform(Value),
    Lanes(Value),
}

/// Host functions the generated code calls.
pub struct Imports {
    pub logf: FuncRef,
    pub powf: FuncRef,
    /// `(record, buffer, index)`; present in bounds-checked mode.
    pub oob: Option<(FuncRef, i64)>,
}

/// Where a kernel's constant table is.
#[derive(Clone, Copy)]
pub enum TableAddr {
    /// At a fixed address (JIT: the data is kept alive by the compiled kernel).
    Absolute(i64),
    /// At a data symbol of the module (an object file's tables).
    Symbol(GlobalValue),
}

pub struct Emitter<'a, 'b> {
    pub b: &'a mut FunctionBuilder<'b>,
    pub k: &'a Kernel,
    pub fma: bool,
    pub imports: Imports,
    pub tables: Vec<TableAddr>,
    /// Base pointers of the buffers, loaded at entry.
    pub bases: Vec<Value>,
    /// Addresses of the scratch arrays (stack slots of the entry function).
    pub scratch: Vec<Value>,
    /// Values of the uniform loop variables (and lane 0 of the vector variable).
    pub env: HashMap<u32, Value>,
    /// The vector variable of the innermost vector context.
    pub lane: Option<Var>,
    pub scalars: HashMap<ScalarId, Val>,
    /// Non-affine index subexpressions computed once at the top of the innermost loop body
    /// binding one of their variables (see [`Emitter::hoist`]).
    pub hoisted: HashMap<Index, Value>,
}

/// The statements or expression a loop variable is bound over.
#[derive(Clone, Copy)]
enum Scope<'s> {
    Stmts(&'s [Stmt]),
    Expr(&'s Expr),
}

impl Scope<'_> {
    /// Calls `index` on every index expression and `bind` on every variable bound inside.
    fn walk(self, index: &mut dyn FnMut(&Index), bind: &mut dyn FnMut(Var)) {
        let expr = |e: &Expr, index: &mut dyn FnMut(&Index), bind: &mut dyn FnMut(Var)| {
            e.visit(&mut |x| match x {
                Expr::Load { index: i, .. }
                | Expr::Table { index: i, .. }
                | Expr::Scratch { index: i, .. } => index(i),
                Expr::Select { pred, .. } => {
                    if let Pred::Index(c) = &**pred {
                        for (_, a, b) in &c.0 {
                            index(a);
                            index(b);
                        }
                    }
                }
                Expr::Reduce { vars, .. } => vars.iter().for_each(|&v| bind(v)),
                _ => {}
            })
        };
        match self {
            Scope::Expr(e) => expr(e, index, bind),
            Scope::Stmts(body) => {
                for s in body {
                    match s {
                        Stmt::Loop { var, body, .. } => {
                            bind(*var);
                            Scope::Stmts(body).walk(index, bind);
                        }
                        Stmt::Let { value, .. } => expr(value, index, bind),
                        Stmt::Store {
                            index: i, value, ..
                        }
                        | Stmt::ScratchStore {
                            index: i, value, ..
                        } => {
                            index(i);
                            expr(value, index, bind);
                        }
                    }
                }
            }
        }
    }
}

fn f32x4() -> Type {
    types::F32X4
}

fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

impl Emitter<'_, '_> {
    fn iconst(&mut self, v: i64) -> Value {
        self.b.ins().iconst(types::I64, v)
    }

    // ----- control flow -------------------------------------------------------------------

    /// `for i in (start..end).step_by(step)` while `i + step <= end`; returns the first index
    /// not run (where a tail loop continues).
    fn counted_loop(
        &mut self,
        start: Value,
        end: Value,
        step: i64,
        body: &mut dyn FnMut(&mut Self, Value),
    ) -> Value {
        let header = self.b.create_block();
        let block = self.b.create_block();
        let exit = self.b.create_block();
        self.b.append_block_param(header, types::I64);
        self.b.append_block_param(exit, types::I64);
        self.b.ins().jump(header, &[BlockArg::Value(start)]);
        self.b.switch_to_block(header);
        let i = self.b.block_params(header)[0];
        let last = self.b.ins().iadd_imm_s(i, step - 1);
        let more = self.b.ins().icmp(IntCC::SignedLessThan, last, end);
        self.b
            .ins()
            .brif(more, block, &[], exit, &[BlockArg::Value(i)]);
        self.b.switch_to_block(block);
        body(self, i);
        let next = self.b.ins().iadd_imm_s(i, step);
        self.b.ins().jump(header, &[BlockArg::Value(next)]);
        self.b.switch_to_block(exit);
        self.b.block_params(exit)[0]
    }

    /// A loop over `var` from `start` to `end`: four lanes at a time then a scalar tail when
    /// `vector` (and not already vectorised), else one at a time.
    pub fn range_loop(&mut self, var: Var, start: Value, end: Value, vector: bool, body: &[Stmt]) {
        if let Some(pieces) = splitting::split(body, var) {
            for p in &pieces {
                // `start..end` clipped to the piece, counted from its start.
                let lo = self.iconst(p.start);
                let hi = self.iconst(p.start + p.var.extent as i64);
                let clip = |e: &mut Self, v: Value| {
                    let v = e.b.ins().smax(v, lo);
                    let v = e.b.ins().smin(v, hi);
                    e.b.ins().isub(v, lo)
                };
                let (s, t) = (clip(self, start), clip(self, end));
                self.range_loop(p.var, s, t, vector, &p.body);
            }
            return;
        }
        if vector && self.lane.is_none() {
            let fast = versioning::specialise(body, var);
            let rest = self.counted_loop(start, end, LANES, &mut |e, i| {
                e.env.insert(var.id, i);
                e.lane = Some(var);
                match &fast {
                    Some((fast, checks, free)) => e.versioned(var, fast, body, checks, free),
                    None => e.stmts(body),
                }
                e.lane = None;
            });
            self.counted_loop(rest, end, 1, &mut |e, i| {
                e.env.insert(var.id, i);
                let hoisted = e.hoist(var, Scope::Stmts(body));
                e.stmts(body);
                e.unhoist(hoisted);
            });
        } else {
            self.counted_loop(start, end, 1, &mut |e, i| {
                e.env.insert(var.id, i);
                let hoisted = e.hoist(var, Scope::Stmts(body));
                e.stmts(body);
                e.unhoist(hoisted);
            });
        }
    }

    /// Computes, at the top of the body binding `var`, every non-affine index subexpression
    /// of `scope` (a division, remainder, clamp or table lookup) that depends on `var` but on
    /// no variable bound inside `scope` nor on the vector variable, so that inner loops reuse
    /// it instead of recomputing it per iteration (an unflattened grid index, a clamped row).
    /// Returns the keys to drop when the body ends.
    fn hoist(&mut self, var: Var, scope: Scope) -> Vec<Index> {
        let mut inner = Vec::new();
        let mut trees = Vec::new();
        scope.walk(&mut |i| trees.push(i.clone()), &mut |v| inner.push(v));
        let lane = self.lane;
        let hoistable = |x: &Index| {
            x.mentions(var)
                && !lane.is_some_and(|l| x.mentions(l))
                && !inner.iter().any(|&v| x.mentions(v))
        };
        let mut added = Vec::new();
        for t in &trees {
            self.hoist_tree(t, &hoistable, &mut added);
        }
        added
    }

    /// Post-order, so a hoisted expression reuses its hoisted parts.
    fn hoist_tree(
        &mut self,
        x: &Index,
        hoistable: &dyn Fn(&Index) -> bool,
        added: &mut Vec<Index>,
    ) {
        match x {
            Index::Const(_) | Index::Var(_) => return,
            Index::Sum(terms, _) => {
                for (t, _) in terms {
                    self.hoist_tree(t, hoistable, added);
                }
                return;
            }
            Index::Div(a, _) | Index::Rem(a, _) | Index::Lookup(_, a) => {
                self.hoist_tree(a, hoistable, added)
            }
            Index::Min(a, b) | Index::Max(a, b) => {
                self.hoist_tree(a, hoistable, added);
                self.hoist_tree(b, hoistable, added);
            }
        }
        if hoistable(x) && !self.hoisted.contains_key(x) {
            let v = self.index(x);
            self.hoisted.insert(x.clone(), v);
            added.push(x.clone());
        }
    }

    fn unhoist(&mut self, added: Vec<Index>) {
        for x in added {
            self.hoisted.remove(&x);
        }
    }

    /// One vector iteration: `fast` where every check holds over the iteration, else `slow`.
    fn versioned(
        &mut self,
        lane: Var,
        fast: &[Stmt],
        slow: &[Stmt],
        checks: &[Check],
        free: &BTreeSet<Var>,
    ) {
        let mut ok = self.b.ins().iconst(types::I8, 1);
        for c in checks {
            let at = self.index(&c.worst_case(lane, LANES, free));
            let holds = self.b.ins().icmp_imm_s(int_cc(c.op), at, 0);
            ok = self.b.ins().band(ok, holds);
        }
        let (fast_block, slow_block, merge) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        self.b.ins().brif(ok, fast_block, &[], slow_block, &[]);
        for (block, body) in [(fast_block, fast), (slow_block, slow)] {
            self.b.switch_to_block(block);
            self.stmts(body);
            self.b.ins().jump(merge, &[]);
        }
        self.b.switch_to_block(merge);
    }

    pub fn stmts(&mut self, body: &[Stmt]) {
        for s in body {
            match s {
                Stmt::Loop { var, vector, body } => {
                    let (zero, end) = (self.iconst(0), self.iconst(var.extent as i64));
                    self.range_loop(*var, zero, end, *vector, body);
                }
                Stmt::Let { id, value } => {
                    let v = self.expr(value);
                    self.scalars.insert(*id, v);
                }
                Stmt::Store { buf, index, value } => {
                    let v = self.expr(value);
                    self.store(Source::Buf(*buf), index, v);
                }
                Stmt::ScratchStore {
                    scratch,
                    index,
                    value,
                } => {
                    let v = self.expr(value);
                    self.store(Source::Scratch(*scratch as usize), index, v);
                }
            }
        }
    }

    /// The body of a loop kernel: the grid loop over `start..end` (clamped to the extent).
    pub fn loops_body(&mut self, start: Value, end: Value) {
        let Body::Loops { grid, vector, body } = &self.k.body else {
            unreachable!("called for loop kernels")
        };
        let extent = self.iconst(grid.extent as i64);
        let end = self.b.ins().umin(end, extent);
        let start = self.b.ins().umin(start, end);
        self.range_loop(*grid, start, end, *vector, body);
    }

    /// The body of an epilogue: rows `r0..r1`, columns `c0..c1` (vectorised) of `batch`.
    pub fn epilogue_body(
        &mut self,
        e: &Epilogue,
        batch: Value,
        rows: [Value; 2],
        cols: [Value; 2],
    ) {
        let extents = [e.batch.extent, e.row.extent, e.col.extent].map(|x| x as i64);
        let clamp = |em: &mut Self, v: Value, n: i64| {
            let n = em.iconst(n);
            em.b.ins().umin(v, n)
        };
        let batch = clamp(self, batch, extents[0] - 1);
        let r1 = clamp(self, rows[1], extents[1]);
        let r0 = self.b.ins().umin(rows[0], r1);
        let c1 = clamp(self, cols[1], extents[2]);
        let c0 = self.b.ins().umin(cols[0], c1);
        self.env.insert(e.batch.id, batch);
        let (col, body) = (e.col, e.body.clone());
        let scope = [Stmt::Loop {
            var: col,
            vector: true,
            body: body.clone(),
        }];
        let hoisted = self.hoist(e.batch, Scope::Stmts(&scope));
        self.counted_loop(r0, r1, 1, &mut |em, i| {
            em.env.insert(e.row.id, i);
            let hoisted = em.hoist(e.row, Scope::Stmts(&scope));
            em.range_loop(col, c0, c1, true, &body);
            em.unhoist(hoisted);
        });
        self.unhoist(hoisted);
    }

    // ----- indices ------------------------------------------------------------------------

    /// An index expression, with the vector variable (if any) at its lane-0 value.
    fn index(&mut self, x: &Index) -> Value {
        if matches!(
            x,
            Index::Div(..) | Index::Rem(..) | Index::Min(..) | Index::Max(..) | Index::Lookup(..)
        ) {
            if let Some(&v) = self.hoisted.get(x) {
                return v;
            }
        }
        match x {
            Index::Const(c) => self.iconst(*c),
            Index::Var(v) => self.env[&v.id],
            Index::Sum(terms, c) => {
                let mut acc = self.iconst(*c);
                for (t, k) in terms {
                    let v = self.index(t);
                    let v = if *k == 1 {
                        v
                    } else {
                        let kk = self.iconst(*k);
                        self.b.ins().imul(v, kk)
                    };
                    acc = self.b.ins().iadd(acc, v);
                }
                acc
            }
            Index::Div(a, d) => {
                let v = self.index(a);
                self.floor_div(v, *d, a.range().0 >= 0)
            }
            Index::Rem(a, d) => {
                let v = self.index(a);
                let q = self.floor_div(v, *d, a.range().0 >= 0);
                let dd = self.iconst(*d);
                let qd = self.b.ins().imul(q, dd);
                self.b.ins().isub(v, qd)
            }
            Index::Min(a, b) => {
                let (a, b) = (self.index(a), self.index(b));
                self.b.ins().smin(a, b)
            }
            Index::Max(a, b) => {
                let (a, b) = (self.index(a), self.index(b));
                self.b.ins().smax(a, b)
            }
            Index::Lookup(t, a) => {
                let i = self.index(a);
                let len = self.k.tables[t.id as usize].len();
                let base = self.table_base(t.id as usize);
                self.load_at(
                    types::I64,
                    base,
                    8,
                    len,
                    self.k.buffers.len() + t.id as usize,
                    i,
                )
            }
        }
    }

    /// Floor division by a positive constant (shifts for powers of two).
    fn floor_div(&mut self, v: Value, d: i64, nonnegative: bool) -> Value {
        if d.count_ones() == 1 {
            let s = self.iconst(i64::from(d.trailing_zeros()));
            return self.b.ins().sshr(v, s);
        }
        let dd = self.iconst(d);
        if nonnegative {
            return self.b.ins().udiv(v, dd);
        }
        let q = self.b.ins().sdiv(v, dd);
        let qd = self.b.ins().imul(q, dd);
        let r = self.b.ins().isub(v, qd);
        let neg = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, r, 0);
        let one = self.iconst(1);
        let q1 = self.b.ins().isub(q, one);
        self.b.ins().select(neg, q1, q)
    }

    /// Evaluates `f` once per lane with the vector variable set to that lane's value.
    fn per_lane<T>(&mut self, f: &mut dyn FnMut(&mut Self) -> T) -> Vec<T> {
        let lane = self
            .lane
            .expect("per-lane evaluation needs a vector context");
        let base = self.env[&lane.id];
        let mut out = Vec::new();
        for l in 0..LANES {
            let v = self.b.ins().iadd_imm_s(base, l);
            self.env.insert(lane.id, v);
            out.push(f(self));
        }
        self.env.insert(lane.id, base);
        out
    }

    fn varies_index(&self, x: &Index) -> bool {
        self.lane.is_some_and(|l| x.mentions(l))
    }

    // ----- memory -------------------------------------------------------------------------

    /// Loads `ty` at `base + index·size` after a bounds check (in checked mode) of
    /// `index..index + lanes` against `len`; `report` names the buffer or table.
    fn checked_access(
        &mut self,
        index: Value,
        span: i64,
        len: usize,
        report: usize,
        access: &mut dyn FnMut(&mut Self) -> Option<Value>,
        ty: Option<Type>,
    ) -> Option<Value> {
        let Some((oob, record)) = self.imports.oob else {
            return access(self);
        };
        let ok_blk = self.b.create_block();
        let bad_blk = self.b.create_block();
        let merge = self.b.create_block();
        if let Some(t) = ty {
            self.b.append_block_param(merge, t);
        }
        // index >= 0 and index + span <= len, as one unsigned comparison.
        let limit = self.iconst(len as i64 - span + 1);
        let ok = if (len as i64) < span {
            self.b.ins().iconst(types::I8, 0)
        } else {
            self.b.ins().icmp(IntCC::UnsignedLessThan, index, limit)
        };
        self.b.ins().brif(ok, ok_blk, &[], bad_blk, &[]);
        self.b.switch_to_block(bad_blk);
        let (rec, buf) = (self.iconst(record), self.iconst(report as i64));
        self.b.ins().call(oob, &[rec, buf, index]);
        let fallback = ty.map(|t| self.zero(t));
        let args: Vec<BlockArg> = fallback.iter().map(|&v| BlockArg::Value(v)).collect();
        self.b.ins().jump(merge, &args);
        self.b.switch_to_block(ok_blk);
        let v = access(self);
        let args: Vec<BlockArg> = v.iter().map(|&v| BlockArg::Value(v)).collect();
        self.b.ins().jump(merge, &args);
        self.b.switch_to_block(merge);
        ty.map(|_| self.b.block_params(merge)[0])
    }

    fn zero(&mut self, ty: Type) -> Value {
        match ty {
            types::I64 => self.iconst(0),
            types::F32 => self.b.ins().f32const(0.0),
            _ => {
                let z = self.b.ins().f32const(0.0);
                self.b.ins().splat(ty, z)
            }
        }
    }

    /// The address of constant table `t`.
    fn table_base(&mut self, t: usize) -> Value {
        match self.tables[t] {
            TableAddr::Absolute(addr) => self.iconst(addr),
            TableAddr::Symbol(gv) => self.b.ins().symbol_value(types::I64, gv),
        }
    }

    fn load_at(
        &mut self,
        ty: Type,
        base: Value,
        size: i64,
        len: usize,
        report: usize,
        index: Value,
    ) -> Value {
        let span = if ty == f32x4() { LANES } else { 1 };
        self.checked_access(
            index,
            span,
            len,
            report,
            &mut |e| {
                let off = e.b.ins().imul_imm_s(index, size);
                let addr = e.b.ins().iadd(base, off);
                Some(e.b.ins().load(ty, flags(), addr, 0))
            },
            Some(ty),
        )
        .expect("a load has a value")
    }

    /// The base address, element count and violation-report id of a float array.
    fn array(&mut self, src: Source) -> (Value, usize, usize) {
        let k = self.k;
        match src {
            Source::Buf(b) => (self.bases[b], k.buffers[b].len(), b),
            Source::Table(t) => {
                let base = self.table_base(t);
                (base, k.tables[t].len(), k.buffers.len() + t)
            }
            Source::Scratch(s) => (
                self.scratch[s],
                k.scratch[s].len,
                k.buffers.len() + k.tables.len() + s,
            ),
        }
    }

    /// A float from a buffer, a float table or a scratch array at `x`.
    fn read(&mut self, src: Source, x: &Index) -> Val {
        let (base, len, report) = self.array(src);
        if !self.varies_index(x) {
            let i = self.index(x);
            return Val::Uniform(self.load_at(types::F32, base, 4, len, report, i));
        }
        let lane = self.lane.expect("varying");
        match x.affine_coefficient(lane) {
            Some(1) => {
                let i = self.index(x);
                Val::Lanes(self.load_at(f32x4(), base, 4, len, report, i))
            }
            Some(c) => {
                let i0 = self.index(x);
                let vals: Vec<Value> = (0..LANES)
                    .map(|l| {
                        let i = self.b.ins().iadd_imm_s(i0, c * l);
                        self.load_at(types::F32, base, 4, len, report, i)
                    })
                    .collect();
                Val::Lanes(self.gather(&vals))
            }
            None => {
                let vals = self.per_lane(&mut |e| {
                    let i = e.index(x);
                    e.load_at(types::F32, base, 4, len, report, i)
                });
                Val::Lanes(self.gather(&vals))
            }
        }
    }

    fn gather(&mut self, vals: &[Value]) -> Value {
        let mut v = self.b.ins().splat(f32x4(), vals[0]);
        for (l, &x) in vals.iter().enumerate().skip(1) {
            v = self.b.ins().insertlane(v, x, l as u8);
        }
        v
    }

    /// Stores to a buffer or a scratch array at `x`.
    fn store(&mut self, dst: Source, x: &Index, v: Val) {
        let (base, len, report) = self.array(dst);
        let put = |e: &mut Self, ty: Type, i: Value, val: Value| {
            e.checked_access(
                i,
                if ty == f32x4() { LANES } else { 1 },
                len,
                report,
                &mut |e| {
                    let off = e.b.ins().imul_imm_s(i, 4);
                    let addr = e.b.ins().iadd(base, off);
                    e.b.ins().store(flags(), val, addr, 0);
                    None
                },
                None,
            );
        };
        let lane = match (self.lane, v) {
            (Some(l), _) if x.mentions(l) => l,
            (_, Val::Uniform(s)) => {
                // A uniform store in a vector context is written once per group of lanes.
                let i = self.index(x);
                put(self, types::F32, i, s);
                return;
            }
            (_, Val::Lanes(_)) => unreachable!("varying values are stored at varying indices"),
        };
        let vec = self.widen(v);
        match x.affine_coefficient(lane) {
            Some(1) => {
                let i = self.index(x);
                put(self, f32x4(), i, vec);
            }
            coef => {
                let idx: Vec<Value> = match coef {
                    Some(c) => {
                        let i0 = self.index(x);
                        (0..LANES)
                            .map(|l| self.b.ins().iadd_imm_s(i0, c * l))
                            .collect()
                    }
                    None => self.per_lane(&mut |e| e.index(x)),
                };
                for (l, i) in idx.into_iter().enumerate() {
                    let s = self.b.ins().extractlane(vec, l as u8);
                    put(self, types::F32, i, s);
                }
            }
        }
    }

    // ----- expressions --------------------------------------------------------------------

    fn widen(&mut self, v: Val) -> Value {
        match v {
            Val::Uniform(s) => self.b.ins().splat(f32x4(), s),
            Val::Lanes(v) => v,
        }
    }

    fn konst(&mut self, c: f32) -> Val {
        Val::Uniform(self.b.ins().f32const(c))
    }

    /// Whether `e` differs between the lanes of the current vector context.
    fn varies(&self, e: &Expr) -> bool {
        let Some(lane) = self.lane else {
            return false;
        };
        let mut v = false;
        e.visit(&mut |x| match x {
            Expr::Load { index, .. } | Expr::Table { index, .. } | Expr::Scratch { index, .. } => {
                v |= index.mentions(lane)
            }
            Expr::Scalar(id) => v |= matches!(self.scalars.get(id), Some(Val::Lanes(_))),
            Expr::Select { pred, .. } => {
                if let Pred::Index(c) = &**pred {
                    v |= c.mentions(lane);
                }
            }
            _ => {}
        });
        v
    }

    /// Applies a lane-wise operation to values of either kind, splatting as needed.
    fn lanewise(
        &mut self,
        args: &[Val],
        f: &mut dyn FnMut(&mut Self, Type, &[Value]) -> Value,
    ) -> Val {
        if args.iter().all(|a| matches!(a, Val::Uniform(_))) {
            let xs: Vec<Value> = args
                .iter()
                .map(|a| match a {
                    Val::Uniform(v) => *v,
                    Val::Lanes(_) => unreachable!(),
                })
                .collect();
            Val::Uniform(f(self, types::F32, &xs))
        } else {
            let xs: Vec<Value> = args.iter().map(|&a| self.widen(a)).collect();
            Val::Lanes(f(self, f32x4(), &xs))
        }
    }

    pub fn expr(&mut self, e: &Expr) -> Val {
        match e {
            Expr::Const(c) => self.konst(*c),
            Expr::Load { buf, index } => self.read(Source::Buf(*buf), index),
            Expr::Table { table, index } => self.read(Source::Table(*table as usize), index),
            Expr::Scratch { scratch, index } => {
                self.read(Source::Scratch(*scratch as usize), index)
            }
            Expr::Scalar(id) => self.scalars[id],
            Expr::Unary(op, x) => {
                let x = self.expr(x);
                self.unary(*op, x)
            }
            // a·b + c as one fused multiply-add where the target has it.
            Expr::Binary(Binary::Add, a, c) if self.fma && (is_mul(a) || is_mul(c)) => {
                let (m, c) = if is_mul(a) { (a, c) } else { (c, a) };
                let Expr::Binary(Binary::Mul, x, y) = &**m else {
                    unreachable!("checked by is_mul")
                };
                let args = [self.expr(x), self.expr(y), self.expr(c)];
                self.lanewise(&args, &mut |e, _, v| e.b.ins().fma(v[0], v[1], v[2]))
            }
            Expr::Binary(op, a, b) => {
                let args = [self.expr(a), self.expr(b)];
                self.binary(*op, &args)
            }
            Expr::Select {
                pred,
                then,
                otherwise,
            } => {
                let (t, o) = (self.expr(then), self.expr(otherwise));
                self.select(pred, t, o)
            }
            Expr::Reduce { op, vars, body } => self.reduce(*op, vars, body),
        }
    }

    fn unary(&mut self, op: Unary, x: Val) -> Val {
        let fma = self.fma;
        match op {
            Unary::Log => self.libcall(self.imports.logf, &[x]),
            _ => self.lanewise(&[x], &mut |e, ty, v| {
                let x = v[0];
                let mut m = Math {
                    b: &mut *e.b,
                    ty,
                    fma,
                };
                match op {
                    Unary::Neg => m.b.ins().fneg(x),
                    Unary::Abs => m.b.ins().fabs(x),
                    Unary::Sqrt => m.b.ins().sqrt(x),
                    Unary::Rsqrt => {
                        let s = m.b.ins().sqrt(x);
                        let one = m.konst(1.0);
                        m.b.ins().fdiv(one, s)
                    }
                    Unary::Exp => m.exp(x),
                    Unary::Expm1 => m.expm1(x),
                    Unary::Tanh => m.tanh(x),
                    Unary::Erf => m.erf(x),
                    Unary::Sigmoid => m.sigmoid(x),
                    Unary::Log => unreachable!("a library call"),
                }
            }),
        }
    }

    fn binary(&mut self, op: Binary, args: &[Val]) -> Val {
        if op == Binary::Pow {
            return self.libcall(self.imports.powf, args);
        }
        self.lanewise(args, &mut |e, _, v| {
            let (a, b) = (v[0], v[1]);
            match op {
                Binary::Add => e.b.ins().fadd(a, b),
                Binary::Sub => e.b.ins().fsub(a, b),
                Binary::Mul => e.b.ins().fmul(a, b),
                Binary::Div => e.b.ins().fdiv(a, b),
                Binary::Max => e.b.ins().fmax(a, b),
                Binary::Min => e.b.ins().fmin(a, b),
                Binary::Pow => unreachable!("a library call"),
            }
        })
    }

    /// A host function of f32s, called once per lane for varying arguments.
    fn libcall(&mut self, f: FuncRef, args: &[Val]) -> Val {
        let call = |e: &mut Self, xs: &[Value]| -> Value {
            let inst = e.b.ins().call(f, xs);
            e.b.inst_results(inst)[0]
        };
        if args.iter().all(|a| matches!(a, Val::Uniform(_))) {
            let xs: Vec<Value> = args
                .iter()
                .map(|a| match a {
                    Val::Uniform(v) => *v,
                    Val::Lanes(_) => unreachable!(),
                })
                .collect();
            return Val::Uniform(call(self, &xs));
        }
        let vecs: Vec<Value> = args.iter().map(|&a| self.widen(a)).collect();
        let mut lanes = Vec::new();
        for l in 0..LANES as u8 {
            let xs: Vec<Value> = vecs
                .iter()
                .map(|&v| self.b.ins().extractlane(v, l))
                .collect();
            lanes.push(call(self, &xs));
        }
        Val::Lanes(self.gather(&lanes))
    }

    fn select(&mut self, pred: &Pred, then: Val, otherwise: Val) -> Val {
        match pred {
            Pred::Index(c) if !self.lane.is_some_and(|l| c.mentions(l)) => {
                let cond = self.cond(c);
                self.lanewise(&[then, otherwise], &mut |e, _, v| {
                    e.b.ins().select(cond, v[0], v[1])
                })
            }
            Pred::Index(c) => {
                // One mask lane per vector lane.
                let bits = self.per_lane(&mut |e| {
                    let b = e.cond(c);
                    let w = e.b.ins().uextend(types::I32, b);
                    e.b.ins().ineg(w)
                });
                let mut mask = self.b.ins().splat(types::I32X4, bits[0]);
                for (l, &b) in bits.iter().enumerate().skip(1) {
                    mask = self.b.ins().insertlane(mask, b, l as u8);
                }
                let mask = self.b.ins().bitcast(f32x4(), MemFlagsData::new(), mask);
                let (t, o) = (self.widen(then), self.widen(otherwise));
                Val::Lanes(self.b.ins().bitselect(mask, t, o))
            }
            Pred::Float(op, a, b) => {
                let (a, b) = (self.expr(a), self.expr(b));
                let cc = float_cc(*op);
                self.lanewise(&[a, b, then, otherwise], &mut |e, ty, v| {
                    let c = e.b.ins().fcmp(cc, v[0], v[1]);
                    if ty == types::F32 {
                        e.b.ins().select(c, v[2], v[3])
                    } else {
                        let mask = e.b.ins().bitcast(f32x4(), MemFlagsData::new(), c);
                        e.b.ins().bitselect(mask, v[2], v[3])
                    }
                })
            }
        }
    }

    /// A conjunction of index comparisons as an `i8` (lane-0 value of the vector variable).
    fn cond(&mut self, c: &Cond) -> Value {
        let mut acc = self.b.ins().iconst(types::I8, 1);
        for (op, a, b) in &c.0 {
            let (a, b) = (self.index(a), self.index(b));
            let t = self.b.ins().icmp(int_cc(*op), a, b);
            acc = self.b.ins().band(acc, t);
        }
        acc
    }

    fn reduce(&mut self, op: ReduceOp, vars: &[Var], body: &Expr) -> Val {
        let init = match op {
            ReduceOp::Sum => 0.0,
            ReduceOp::Max => f32::NEG_INFINITY,
        };
        let combine = move |e: &mut Self, acc: Val, x: Val| -> Val {
            let b = match op {
                ReduceOp::Sum => Binary::Add,
                ReduceOp::Max => Binary::Max,
            };
            e.binary(b, &[acc, x])
        };
        // A single contiguous variable outside any vector loop: four partial results.
        if let ([v], None) = (vars, self.lane) {
            if v.extent >= 2 * LANES as usize {
                return self.vector_reduce(op, *v, init, body, &combine);
            }
        }
        // Inside a vector loop whose lanes are far apart in memory (a mean over each
        // channel's plane, the channels in the lanes), one vectorised reduction per lane:
        // four contiguous streams instead of a four-load gather per step.
        if let ([v], Some(lane)) = (vars, self.lane) {
            if v.extent >= 2 * LANES as usize && self.contiguous_across_lanes(body, *v, lane) {
                self.lane = None;
                let base = self.env[&lane.id];
                let mut sums = Vec::with_capacity(LANES as usize);
                for l in 0..LANES {
                    let at = self.b.ins().iadd_imm_s(base, l);
                    self.env.insert(lane.id, at);
                    sums.push(match self.vector_reduce(op, *v, init, body, &combine) {
                        Val::Uniform(x) => x,
                        Val::Lanes(x) => self.b.ins().extractlane(x, 0),
                    });
                }
                self.env.insert(lane.id, base);
                self.lane = Some(lane);
                return Val::Lanes(self.gather(&sums));
            }
        }
        let ty = if self.varies(body) {
            f32x4()
        } else {
            types::F32
        };
        let wrap = move |v: Value| {
            if ty == types::F32 {
                Val::Uniform(v)
            } else {
                Val::Lanes(v)
            }
        };
        // Independent partial results along the innermost variable, so consecutive
        // multiply-adds do not wait for each other.
        let (outer, last) = vars.split_at(vars.len() - 1);
        let last = last[0];
        let ways = if last.extent >= 2 * UNROLL { UNROLL } else { 1 };
        let start = self.b.ins().f32const(init);
        let start = if ty == types::F32 {
            start
        } else {
            self.b.ins().splat(ty, start)
        };
        let accs: Vec<Variable> = (0..ways)
            .map(|_| {
                let acc = self.b.declare_var(ty);
                self.b.def_var(acc, start);
                acc
            })
            .collect();
        let step = |e: &mut Self, acc: Variable| {
            let cur = wrap(e.b.use_var(acc));
            let next = match e.accumulate(op, cur, body, &combine) {
                Val::Uniform(v) if ty != types::F32 => e.b.ins().splat(ty, v),
                Val::Uniform(v) | Val::Lanes(v) => v,
            };
            e.b.def_var(acc, next);
        };
        let scope = Expr::reduce(op, vec![last], body.clone());
        self.nested_reduce(outer, &scope, &mut |e| {
            if ways == 1 {
                e.nested_reduce(&[last], body, &mut |e| step(e, accs[0]));
                return;
            }
            let (zero, end) = (e.iconst(0), e.iconst(last.extent as i64));
            let rest = e.counted_loop(zero, end, ways as i64, &mut |e, i| {
                for (k, &acc) in accs.iter().enumerate() {
                    let at = e.b.ins().iadd_imm_s(i, k as i64);
                    e.env.insert(last.id, at);
                    step(e, acc);
                }
            });
            e.counted_loop(rest, end, 1, &mut |e, i| {
                e.env.insert(last.id, i);
                step(e, accs[0]);
            });
        });
        let mut parts: Vec<Val> = accs.iter().map(|&a| wrap(self.b.use_var(a))).collect();
        while parts.len() > 1 {
            parts = parts
                .chunks(2)
                .map(|p| match p {
                    [a, b] => combine(self, *a, *b),
                    [a] => *a,
                    _ => unreachable!("chunks of two"),
                })
                .collect();
        }
        parts[0]
    }

    /// Whether every read in `body` that moves with `v` is contiguous in it, at least one
    /// does, none is contiguous across the lanes of `lane` (which a vector load would then
    /// serve), and no value computed per lane is used (a reduction per lane reads it as
    /// one value).
    fn contiguous_across_lanes(&self, body: &Expr, v: Var, lane: Var) -> bool {
        let (mut along, mut ok) = (false, true);
        body.visit(&mut |x| match x {
            Expr::Load { index, .. } | Expr::Table { index, .. } | Expr::Scratch { index, .. } => {
                if index.mentions(v) {
                    let unit = index.affine_coefficient(v) == Some(1);
                    along |= unit;
                    ok &= unit;
                }
                ok &= index.affine_coefficient(lane) != Some(1);
            }
            Expr::Scalar(id) => ok &= !matches!(self.scalars.get(id), Some(Val::Lanes(_))),
            _ => {}
        });
        along && ok
    }

    /// `combine(acc, body)`, as one fused multiply-add for a sum of products where the host
    /// has them.
    fn accumulate(
        &mut self,
        op: ReduceOp,
        acc: Val,
        body: &Expr,
        combine: &dyn Fn(&mut Self, Val, Val) -> Val,
    ) -> Val {
        match body {
            Expr::Binary(Binary::Mul, a, b) if op == ReduceOp::Sum && self.fma => {
                let args = [self.expr(a), self.expr(b), acc];
                self.lanewise(&args, &mut |e, _, v| e.b.ins().fma(v[0], v[1], v[2]))
            }
            _ => {
                let x = self.expr(body);
                combine(self, acc, x)
            }
        }
    }

    /// Loops over `vars` (outermost first) around `inner`, which evaluates `body`.
    fn nested_reduce(&mut self, vars: &[Var], body: &Expr, inner: &mut dyn FnMut(&mut Self)) {
        match vars.split_first() {
            None => inner(self),
            // A variable of one value needs no loop.
            Some((v, rest)) if v.extent == 1 => {
                let zero = self.iconst(0);
                self.env.insert(v.id, zero);
                self.nested_reduce(rest, body, inner);
            }
            Some((v, rest)) => {
                let (zero, end) = (self.iconst(0), self.iconst(v.extent as i64));
                let v = *v;
                // The variables of the loops inside are bound inside the hoisting scope.
                let scope = Expr::reduce(ReduceOp::Sum, rest.to_vec(), body.clone());
                self.counted_loop(zero, end, 1, &mut |e, i| {
                    e.env.insert(v.id, i);
                    let hoisted = e.hoist(v, Scope::Expr(&scope));
                    e.nested_reduce(rest, body, inner);
                    e.unhoist(hoisted);
                });
            }
        }
    }

    fn vector_reduce(
        &mut self,
        op: ReduceOp,
        v: Var,
        init: f32,
        body: &Expr,
        combine: &dyn Fn(&mut Self, Val, Val) -> Val,
    ) -> Val {
        let s = self.b.ins().f32const(init);
        let s4 = self.b.ins().splat(f32x4(), s);
        // Two vectors of partial results on long rows, so the multiply-adds overlap.
        let ways = if v.extent >= 4 * LANES as usize { 2 } else { 1 };
        let accs: Vec<Variable> = (0..ways)
            .map(|_| {
                let acc = self.b.declare_var(f32x4());
                self.b.def_var(acc, s4);
                acc
            })
            .collect();
        let (zero, end) = (self.iconst(0), self.iconst(v.extent as i64));
        let rest = self.counted_loop(zero, end, LANES * ways as i64, &mut |e, i| {
            e.lane = Some(v);
            for (k, &acc) in accs.iter().enumerate() {
                let at = e.b.ins().iadd_imm_s(i, LANES * k as i64);
                e.env.insert(v.id, at);
                let cur = Val::Lanes(e.b.use_var(acc));
                let next = e.accumulate(op, cur, body, combine);
                let next = e.widen(next);
                e.b.def_var(acc, next);
            }
            e.lane = None;
        });
        // Whole vectors left over when two at a time overshoot.
        let rest = if ways > 1 {
            self.counted_loop(rest, end, LANES, &mut |e, i| {
                e.lane = Some(v);
                e.env.insert(v.id, i);
                let cur = Val::Lanes(e.b.use_var(accs[0]));
                let next = e.accumulate(op, cur, body, combine);
                let next = e.widen(next);
                e.b.def_var(accs[0], next);
                e.lane = None;
            })
        } else {
            rest
        };
        let mut all = Val::Lanes(self.b.use_var(accs[0]));
        for &acc in &accs[1..] {
            let other = Val::Lanes(self.b.use_var(acc));
            all = combine(self, all, other);
        }
        let all = self.widen(all);
        let total = self.b.declare_var(types::F32);
        let mut acc = Val::Uniform(self.b.ins().extractlane(all, 0));
        for l in 1..LANES as u8 {
            let x = Val::Uniform(self.b.ins().extractlane(all, l));
            acc = combine(self, acc, x);
        }
        let Val::Uniform(acc) = acc else {
            unreachable!("lanes combine to a scalar")
        };
        self.b.def_var(total, acc);
        self.counted_loop(rest, end, 1, &mut |e, i| {
            e.env.insert(v.id, i);
            let cur = Val::Uniform(e.b.use_var(total));
            if let Val::Uniform(next) = e.accumulate(op, cur, body, combine) {
                e.b.def_var(total, next);
            }
        });
        Val::Uniform(self.b.use_var(total))
    }
}

/// A float array the generated code reads or writes.
#[derive(Clone, Copy)]
enum Source {
    Buf(BufId),
    Table(usize),
    Scratch(usize),
}

fn is_mul(e: &Expr) -> bool {
    matches!(e, Expr::Binary(Binary::Mul, _, _))
}

fn int_cc(op: CmpOp) -> IntCC {
    match op {
        CmpOp::Lt => IntCC::SignedLessThan,
        CmpOp::Le => IntCC::SignedLessThanOrEqual,
        CmpOp::Gt => IntCC::SignedGreaterThan,
        CmpOp::Ge => IntCC::SignedGreaterThanOrEqual,
        CmpOp::Eq => IntCC::Equal,
        CmpOp::Ne => IntCC::NotEqual,
    }
}

fn float_cc(op: CmpOp) -> FloatCC {
    match op {
        CmpOp::Lt => FloatCC::LessThan,
        CmpOp::Le => FloatCC::LessThanOrEqual,
        CmpOp::Gt => FloatCC::GreaterThan,
        CmpOp::Ge => FloatCC::GreaterThanOrEqual,
        CmpOp::Eq => FloatCC::Equal,
        CmpOp::Ne => FloatCC::NotEqual,
    }
}

/// The table data as the generated code reads it (i64 or f32 elements).
pub enum TableStorage {
    Int(Box<[i64]>),
    Float(Box<[f32]>),
}

impl TableStorage {
    pub fn new(data: &TableData) -> TableStorage {
        match data {
            TableData::Int(v) => TableStorage::Int(v.clone().into_boxed_slice()),
            TableData::Float(v) => TableStorage::Float(v.clone().into_boxed_slice()),
        }
    }

    pub fn addr(&self) -> i64 {
        match self {
            TableStorage::Int(v) => v.as_ptr() as i64,
            TableStorage::Float(v) => v.as_ptr() as i64,
        }
    }
}
