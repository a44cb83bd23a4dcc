//! The one source printer of the GPU code generators: Kernel IR indices, conditions,
//! expressions and statements printed as C-like text, parameterised by a small [`Syntax`]
//! trait that spells the few things WGSL and CUDA C write differently (declarations, loops,
//! `select`, intrinsic calls, bindings, builtins). Kernel shapes (loop kernels in `loops.rs`,
//! matrix products in `contraction.rs`) are written once against this printer.
//!
//! Every size is static and printed as a literal. Integers are 32-bit (the plan builder
//! refuses buffers of 2³¹ elements or more); floor division and remainder of a value that
//! can be negative go through helpers, plain `/` and `%` otherwise. A reduction expression
//! is hoisted into an accumulator loop emitted just before the statement that reads it; in
//! a cooperative loop kernel the outermost ones are shared by a workgroup (strided
//! accumulation, then a tree in workgroup memory between barriers).

use crate::kernel::{
    Binary, CmpOp, Cond, Expr, Index, Kernel, Pred, ReduceOp, Stmt, TableData, Unary, Var,
};
use bbc_runtime::gpu::BindingAccess;
use std::fmt::Write;

/// A value type of the generated code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    F32,
    I32,
}

/// Calls whose spelling differs between dialects (some are helper functions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Exp,
    /// `e^x − 1`, accurate near 0.
    Expm1,
    Log,
    Sqrt,
    Abs,
    Tanh,
    Erf,
    Pow,
    /// Index minimum and maximum.
    IntMin,
    IntMax,
    /// NaN-propagating float maximum and minimum (`torch.maximum`).
    Max,
    Min,
    /// Floor division and non-negative remainder of an integer by a positive constant.
    FloorDiv,
    FloorRem,
    Sigmoid,
    /// `a·b + c`.
    Fma,
    /// A float clamped into `[lo, hi]`.
    Clamp,
}

/// How a dialect spells what the walk prints.
pub trait Syntax {
    /// An immutable local (`let` / `const`).
    fn constant(&self, ty: Ty, name: &str, value: &str) -> String;
    /// A mutable local.
    fn variable(&self, ty: Ty, name: &str, init: &str) -> String;
    /// A function-local f32 array (scratch, accumulators), contents undefined.
    fn local_array(&self, name: &str, len: usize) -> String;
    /// `for (name = start; name < end; name += step) {`
    fn for_open(&self, name: &str, start: &str, end: &str, step: usize) -> String;
    /// A hint that the next loop has a short constant trip count worth unrolling.
    fn unroll(&self) -> Option<&'static str>;
    /// A finite f32 literal.
    fn float_literal(&self, v: f32) -> String;
    /// An f32 with these bits (infinities and NaN have no literal).
    fn float_bits(&self, bits: u32) -> String;
    /// `then` where `cond` holds, else `otherwise` (both evaluated).
    fn select(&self, cond: &str, then: &str, otherwise: &str) -> String;
    /// Whether the f32 `x` is NaN, by a test the compiler cannot fold away (WGSL lets an
    /// implementation assume no float is NaN, so `x != x` may become `false`).
    fn is_nan(&self, x: &str) -> String;
    fn call(&self, f: Call, args: &[String]) -> String;
    /// A constant table at module scope.
    fn table(&self, name: &str, data: &TableData) -> String;
    /// A workgroup-shared f32 array: `(at module scope, declaration)`.
    fn shared_array(&self, name: &str, len: usize) -> (bool, String);
    fn barrier(&self) -> &'static str;
    /// A workgroup barrier that also makes the invocations' writes to storage buffers
    /// visible to each other.
    fn storage_barrier(&self) -> &'static str;
    /// A helper function at module scope returning `result` after `body` lines.
    fn function(
        &self,
        ret: Ty,
        name: &str,
        params: &[(&str, Ty)],
        body: &[String],
        result: &str,
    ) -> String;
    /// The entry point's opening lines, binding i32 locals `wg_x`, `wg_y`, `wg_z` (workgroup
    /// id) and `lid_x`, `lid_y` (invocation within the workgroup); binding `i` is `b<i>`.
    fn entry(&self, entry: &str, bindings: &[BindingAccess], workgroup: [u32; 3]) -> Vec<String>;
    /// Helper functions the calls may use, by name; a kernel includes those it calls.
    fn helpers(&self) -> Vec<(&'static str, String)>;
    /// An early exit from the entry point.
    fn exit(&self) -> &'static str {
        "return;"
    }
}

/// Accumulates a kernel's source: module-scope declarations and the entry's body.
pub struct Printer<'a> {
    pub syntax: &'a dyn Syntax,
    pub kernel: &'a Kernel,
    /// Module-scope declarations (tables, workgroup arrays).
    pub module: String,
    pub body: String,
    /// Counter for hoisted reduction accumulators.
    accumulators: usize,
    /// Invocations sharing the next outermost reduction (see [`Printer::cooperate`]); `None`
    /// while reductions run sequentially in one invocation.
    cooperative: Option<u32>,
    /// Loops [`Printer::open_unrolled`] is unrolling: (depth, variable, extent, where the
    /// body starts in `body`).
    unrolling: Vec<(usize, String, usize, usize)>,
}

impl<'a> Printer<'a> {
    pub fn new(syntax: &'a dyn Syntax, kernel: &'a Kernel) -> Self {
        let mut p = Printer {
            syntax,
            kernel,
            module: String::new(),
            body: String::new(),
            accumulators: 0,
            cooperative: None,
            unrolling: Vec::new(),
        };
        for (i, t) in kernel.tables.iter().enumerate() {
            let decl = syntax.table(&table_name(i), &t.data);
            p.module_line(&decl);
        }
        p
    }

    pub fn module_line(&mut self, text: &str) {
        let _ = writeln!(self.module, "{text}");
    }

    pub fn line(&mut self, depth: usize, text: &str) {
        let _ = writeln!(self.body, "{}{text}", "    ".repeat(depth));
    }

    /// Declares the kernel's scratch arrays (private to the invocation).
    pub fn scratch_arrays(&mut self, depth: usize) {
        for (i, s) in self.kernel.scratch.iter().enumerate() {
            let decl = self.syntax.local_array(&scratch_name(i), s.len);
            self.line(depth, &decl);
        }
    }

    /// Binds loop variable `v` to an integer expression.
    pub fn bind_var(&mut self, depth: usize, v: Var, value: &str) {
        let decl = self.syntax.constant(Ty::I32, &var_name(v), value);
        self.line(depth, &decl);
    }

    /// `for (name = 0; name < extent; name++) {`, unrolled where asked.
    pub fn open_loop(&mut self, depth: usize, name: &str, extent: usize, unroll: bool) {
        if unroll {
            if let Some(hint) = self.syntax.unroll() {
                self.line(depth, hint);
            }
        }
        let open = self.syntax.for_open(name, "0", &extent.to_string(), 1);
        self.line(depth, &open);
    }

    /// A short loop whose variable indexes private arrays (accumulators, fragments): a
    /// dialect with an unrolling hint gets the hint; one without (WGSL) gets the body
    /// written out once per iteration, each copy in a block binding the variable to a
    /// constant, so array indices are constants the driver's compiler can keep in
    /// registers. Closed by [`Printer::close_loop`].
    pub fn open_unrolled(&mut self, depth: usize, name: &str, extent: usize) {
        if self.syntax.unroll().is_some() {
            self.open_loop(depth, name, extent, true);
        } else {
            self.unrolling
                .push((depth, name.to_string(), extent, self.body.len()));
        }
    }

    /// Closes the loop opened at `depth` by [`Printer::open_loop`] or
    /// [`Printer::open_unrolled`].
    pub fn close_loop(&mut self, depth: usize) {
        match self.unrolling.last() {
            Some(&(d, _, _, _)) if d == depth => {
                let (_, name, extent, start) = self.unrolling.pop().expect("just seen");
                let body = self.body.split_off(start);
                for i in 0..extent {
                    self.line(depth, "{");
                    let bind = self.syntax.constant(Ty::I32, &name, &i.to_string());
                    self.line(depth + 1, &bind);
                    self.body.push_str(&body);
                    self.line(depth, "}");
                }
            }
            _ => self.line(depth, "}"),
        }
    }

    pub fn stmts(&mut self, depth: usize, body: &[Stmt]) {
        for s in body {
            self.stmt(depth, s);
        }
    }

    pub fn stmt(&mut self, depth: usize, s: &Stmt) {
        match s {
            Stmt::Loop { var, body, .. } => {
                self.open_loop(depth, &var_name(*var), var.extent, false);
                self.stmts(depth + 1, body);
                self.line(depth, "}");
            }
            Stmt::Let { id, value } => {
                let v = self.expr(depth, value);
                let decl = self.syntax.constant(Ty::F32, &format!("s{id}"), &v);
                self.line(depth, &decl);
            }
            Stmt::Store { buf, index, value } => {
                let v = self.expr(depth, value);
                let at = self.index(index);
                self.line(depth, &format!("{}[{at}] = {v};", buffer_name(*buf)));
            }
            Stmt::ScratchStore {
                scratch,
                index,
                value,
            } => {
                let v = self.expr(depth, value);
                let at = self.index(index);
                let name = scratch_name(*scratch as usize);
                self.line(depth, &format!("{name}[{at}] = {v};"));
            }
        }
    }

    /// The text of `e`; reductions inside it are emitted as loops at `depth` first.
    pub fn expr(&mut self, depth: usize, e: &Expr) -> String {
        let s = self.syntax;
        match e {
            Expr::Const(c) => self.float(*c),
            Expr::Load { buf, index } => format!("{}[{}]", buffer_name(*buf), self.index(index)),
            Expr::Table { table, index } => {
                format!("{}[{}]", table_name(*table as usize), self.index(index))
            }
            Expr::Scalar(id) => format!("s{id}"),
            Expr::Scratch { scratch, index } => {
                format!("{}[{}]", scratch_name(*scratch as usize), self.index(index))
            }
            Expr::Unary(op, x) => {
                let x = self.expr(depth, x);
                match op {
                    Unary::Neg => format!("(-{x})"),
                    Unary::Rsqrt => {
                        let one = self.float(1.0);
                        format!("({one} / {})", s.call(Call::Sqrt, &[x]))
                    }
                    Unary::Abs => s.call(Call::Abs, &[x]),
                    Unary::Sqrt => s.call(Call::Sqrt, &[x]),
                    Unary::Exp => s.call(Call::Exp, &[x]),
                    Unary::Expm1 => s.call(Call::Expm1, &[x]),
                    Unary::Log => s.call(Call::Log, &[x]),
                    Unary::Tanh => s.call(Call::Tanh, &[x]),
                    Unary::Erf => s.call(Call::Erf, &[x]),
                    Unary::Sigmoid => s.call(Call::Sigmoid, &[x]),
                }
            }
            Expr::Binary(op, a, b) => {
                let (a, b) = (self.expr(depth, a), self.expr(depth, b));
                match op {
                    Binary::Max => s.call(Call::Max, &[a, b]),
                    Binary::Min => s.call(Call::Min, &[a, b]),
                    Binary::Pow => s.call(Call::Pow, &[a, b]),
                    Binary::Add | Binary::Sub | Binary::Mul | Binary::Div => {
                        format!("({a} {} {b})", op.name())
                    }
                }
            }
            Expr::Select {
                pred,
                then,
                otherwise,
            } => {
                let cond = match &**pred {
                    Pred::Index(c) => self.cond(c),
                    Pred::Float(op, a, b) => {
                        let (a, b) = (self.expr(depth, a), self.expr(depth, b));
                        format!("({a} {} {b})", op.symbol())
                    }
                };
                let (t, o) = (self.expr(depth, then), self.expr(depth, otherwise));
                s.select(&cond, &t, &o)
            }
            Expr::Reduce { op, vars, body } => self.reduce(depth, *op, vars, body),
        }
    }

    /// Declares the workgroup array cooperative reductions over `workgroup` invocations
    /// combine their partial results in; once per kernel, before [`Printer::cooperate`].
    pub fn declare_partials(&mut self, workgroup: u32) {
        let (at_module, decl) = self.syntax.shared_array(PARTIALS, workgroup as usize);
        if at_module {
            self.module_line(&decl);
        } else {
            self.line(1, &decl);
        }
    }

    /// Makes the outermost reductions of the expressions printed next cooperative across
    /// `workgroup` invocations (`lid_x` in `0..workgroup`, all of them reaching every
    /// reduction: barriers need uniform control flow), or sequential again with `None`.
    pub fn cooperate(&mut self, workgroup: Option<u32>) {
        self.cooperative = workgroup;
    }

    /// Emits `acc = init; for vars { acc = combine(acc, body) }`; returns the name holding
    /// the result. A cooperative reduction strides its invocations over the flattened
    /// variables, then combines the partial results in a tree in workgroup memory and
    /// broadcasts the total; reductions nested in its body stay sequential.
    fn reduce(&mut self, depth: usize, op: ReduceOp, vars: &[Var], body: &Expr) -> String {
        let acc = format!("r{}", self.accumulators);
        self.accumulators += 1;
        let init = match op {
            ReduceOp::Sum => self.float(0.0),
            ReduceOp::Max => self.float(f32::NEG_INFINITY),
        };
        let decl = self.syntax.variable(Ty::F32, &acc, &init);
        self.line(depth, &decl);
        let cooperative = self.cooperative.take();
        let loops = match cooperative {
            Some(n) => {
                let flat = format!("{acc}_at");
                let total: usize = vars.iter().map(|v| v.extent).product();
                let open = self
                    .syntax
                    .for_open(&flat, "lid_x", &total.to_string(), n as usize);
                self.line(depth, &open);
                // Row-major decomposition of the flat index into the variables.
                let mut stride = total;
                for v in vars {
                    stride /= v.extent;
                    let value = match (stride, v.extent == total) {
                        (_, true) => flat.clone(),
                        (1, false) => format!("({flat} % {})", v.extent),
                        (s, false) if s * v.extent == total => format!("({flat} / {s})"),
                        (s, false) => format!("(({flat} / {s}) % {})", v.extent),
                    };
                    self.bind_var(depth + 1, *v, &value);
                }
                1
            }
            None => {
                for (i, v) in vars.iter().enumerate() {
                    self.open_loop(depth + i, &var_name(*v), v.extent, false);
                }
                vars.len()
            }
        };
        let inner = depth + loops;
        let update = match (op, body) {
            // Products accumulate with a fused multiply-add.
            (ReduceOp::Sum, Expr::Binary(Binary::Mul, a, b)) => {
                let (a, b) = (self.expr(inner, a), self.expr(inner, b));
                self.syntax.call(Call::Fma, &[a, b, acc.clone()])
            }
            (ReduceOp::Sum, _) => format!("({acc} + {})", self.expr(inner, body)),
            (ReduceOp::Max, _) => {
                let v = self.expr(inner, body);
                self.combine(op, &acc, &v)
            }
        };
        self.line(inner, &format!("{acc} = {update};"));
        for i in (0..loops).rev() {
            self.line(depth + i, "}");
        }
        self.cooperative = cooperative;
        match cooperative {
            Some(n) => self.combine_partials(depth, op, &acc, n),
            None => acc,
        }
    }

    fn combine(&self, op: ReduceOp, a: &str, b: &str) -> String {
        match op {
            ReduceOp::Sum => format!("({a} + {b})"),
            ReduceOp::Max => self.syntax.call(Call::Max, &[a.to_string(), b.to_string()]),
        }
    }

    /// Tree-combines each invocation's `partial` over `workgroup` invocations (a power of
    /// two) in workgroup memory; returns the name of the total every invocation holds.
    fn combine_partials(
        &mut self,
        depth: usize,
        op: ReduceOp,
        partial: &str,
        workgroup: u32,
    ) -> String {
        let barrier = self.syntax.barrier();
        self.line(depth, &format!("{PARTIALS}[lid_x] = {partial};"));
        self.line(depth, barrier);
        let mut half = workgroup / 2;
        while half > 0 {
            let both = self.combine(
                op,
                &format!("{PARTIALS}[lid_x]"),
                &format!("{PARTIALS}[lid_x + {half}]"),
            );
            self.line(
                depth,
                &format!("if (lid_x < {half}) {{ {PARTIALS}[lid_x] = {both}; }}"),
            );
            self.line(depth, barrier);
            half /= 2;
        }
        let total = format!("{partial}_all");
        let decl = self
            .syntax
            .constant(Ty::F32, &total, &format!("{PARTIALS}[0]"));
        self.line(depth, &decl);
        // Every invocation has read the total before the array is reused.
        self.line(depth, barrier);
        total
    }

    pub fn float(&self, v: f32) -> String {
        if v.is_finite() {
            self.syntax.float_literal(v)
        } else {
            self.syntax.float_bits(v.to_bits())
        }
    }

    /// A conjunction of index comparisons (`true` when empty).
    pub fn cond(&self, c: &Cond) -> String {
        if c.0.is_empty() {
            return "true".into();
        }
        c.0.iter()
            .map(|(op, a, b)| format!("({} {} {})", self.index(a), op.symbol(), self.index(b)))
            .collect::<Vec<_>>()
            .join(" && ")
    }

    pub fn index(&self, x: &Index) -> String {
        let s = self.syntax;
        match x {
            Index::Const(c) if *c < 0 => format!("({c})"),
            Index::Const(c) => c.to_string(),
            Index::Var(v) => var_name(*v),
            Index::Sum(terms, c) => {
                let mut out = String::from("(");
                for (i, (t, k)) in terms.iter().enumerate() {
                    match (i, *k < 0) {
                        (0, false) => {}
                        (0, true) => out.push('-'),
                        (_, false) => out.push_str(" + "),
                        (_, true) => out.push_str(" - "),
                    }
                    out.push_str(&self.index(t));
                    if k.abs() != 1 {
                        let _ = write!(out, " * {}", k.abs());
                    }
                }
                match c {
                    0 => {}
                    c if *c < 0 => {
                        let _ = write!(out, " - {}", -c);
                    }
                    c => {
                        let _ = write!(out, " + {c}");
                    }
                }
                out.push(')');
                out
            }
            Index::Div(a, d) | Index::Rem(a, d) => {
                let is_div = matches!(x, Index::Div(..));
                let inner = self.index(a);
                if a.range().0 >= 0 {
                    format!("({inner} {} {d})", if is_div { "/" } else { "%" })
                } else {
                    let f = if is_div {
                        Call::FloorDiv
                    } else {
                        Call::FloorRem
                    };
                    s.call(f, &[inner, d.to_string()])
                }
            }
            Index::Min(a, b) => s.call(Call::IntMin, &[self.index(a), self.index(b)]),
            Index::Max(a, b) => s.call(Call::IntMax, &[self.index(a), self.index(b)]),
            Index::Lookup(t, a) => format!("{}[{}]", table_name(t.id as usize), self.index(a)),
        }
    }

    /// The finished source: the helpers it calls, module declarations, then the entry.
    pub fn finish(self, entry_lines: Vec<String>) -> String {
        let helpers = self.syntax.helpers();
        // A helper is needed when the kernel or another needed helper calls it.
        let mut needed = vec![false; helpers.len()];
        loop {
            let mut changed = false;
            for (i, (name, _)) in helpers.iter().enumerate() {
                let call = format!("{name}(");
                let called = self.body.contains(&call)
                    || self.module.contains(&call)
                    || helpers
                        .iter()
                        .enumerate()
                        .any(|(j, (_, text))| j != i && needed[j] && text.contains(&call));
                if called && !needed[i] {
                    needed[i] = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let mut out = String::new();
        for ((_, text), needed) in helpers.iter().zip(needed) {
            if needed {
                out.push_str(text);
            }
        }
        out.push_str(&self.module);
        for l in entry_lines {
            out.push_str(&l);
            out.push('\n');
        }
        out.push_str(&self.body);
        out.push_str("}\n");
        out
    }
}

/// The workgroup array cooperative reductions combine their partial results in.
const PARTIALS: &str = "partials";

pub fn var_name(v: Var) -> String {
    format!("i{}", v.id)
}

pub fn buffer_name(i: usize) -> String {
    format!("b{i}")
}

pub fn table_name(i: usize) -> String {
    format!("t{i}")
}

pub fn scratch_name(i: usize) -> String {
    format!("x{i}")
}

/// The largest variable id a kernel uses plus one, so a kernel shape can add variables.
pub fn fresh_var_id(k: &Kernel) -> u32 {
    let mut next = 0u32;
    let mut see = |v: Var| next = next.max(v.id + 1);
    fn index_vars(x: &Index, see: &mut dyn FnMut(Var)) {
        match x {
            Index::Const(_) => {}
            Index::Var(v) => see(*v),
            Index::Sum(ts, _) => ts.iter().for_each(|(t, _)| index_vars(t, see)),
            Index::Div(a, _) | Index::Rem(a, _) | Index::Lookup(_, a) => index_vars(a, see),
            Index::Min(a, b) | Index::Max(a, b) => {
                index_vars(a, see);
                index_vars(b, see);
            }
        }
    }
    fn cond_vars(c: &Cond, see: &mut dyn FnMut(Var)) {
        for (_, a, b) in &c.0 {
            index_vars(a, see);
            index_vars(b, see);
        }
    }
    fn expr_vars(e: &Expr, see: &mut dyn FnMut(Var)) {
        e.visit(&mut |x| match x {
            Expr::Load { index, .. } | Expr::Table { index, .. } | Expr::Scratch { index, .. } => {
                index_vars(index, see)
            }
            Expr::Select { pred, .. } => {
                if let Pred::Index(c) = &**pred {
                    cond_vars(c, see);
                }
            }
            Expr::Reduce { vars, .. } => vars.iter().for_each(|v| see(*v)),
            _ => {}
        });
    }
    fn stmt_vars(body: &[Stmt], see: &mut dyn FnMut(Var)) {
        for s in body {
            match s {
                Stmt::Loop { var, body, .. } => {
                    see(*var);
                    stmt_vars(body, see);
                }
                Stmt::Let { value, .. } => expr_vars(value, see),
                Stmt::Store { index, value, .. } | Stmt::ScratchStore { index, value, .. } => {
                    index_vars(index, see);
                    expr_vars(value, see);
                }
            }
        }
    }
    match &k.body {
        crate::kernel::Body::Loops { grid, body, .. } => {
            see(*grid);
            stmt_vars(body, &mut see);
        }
        crate::kernel::Body::Contraction(c) => {
            if let Some(e) = &c.epilogue {
                [e.batch, e.row, e.col].into_iter().for_each(&mut see);
                stmt_vars(&e.body, &mut see);
            }
        }
    }
    next
}

/// Hands out variables not used by a kernel.
pub struct FreshVars(pub u32);

impl FreshVars {
    pub fn var(&mut self, extent: usize) -> Var {
        self.0 += 1;
        Var {
            id: self.0 - 1,
            extent: extent.max(1),
        }
    }
}

/// Comparison of an index with a constant bound, for guards.
pub fn below(x: &Index, bound: usize) -> Cond {
    Cond::cmp(CmpOp::Lt, x.clone(), bound as i64)
}

/// Invocations per workgroup of a one-dimensional kernel.
pub const LINEAR_WORKGROUP: u32 = 256;
/// The most workgroups one grid dimension may hold (WebGPU's default limit).
pub const MAX_GRID_DIM: u64 = 65_535;

/// The workgroup counts covering `total` invocations of a one-dimensional kernel: a 2-D
/// grid when one dimension cannot hold them all.
pub fn linear_grid(total: usize) -> [u32; 3] {
    group_grid(total.div_ceil(LINEAR_WORKGROUP as usize))
}

/// A grid of `groups` workgroups: 2-D when one dimension cannot hold them all.
pub fn group_grid(groups: usize) -> [u32; 3] {
    let groups = (groups as u64).max(1);
    let x = groups.min(MAX_GRID_DIM);
    let y = groups.div_ceil(x);
    [x as u32, y as u32, 1]
}

/// The linear index of the workgroup in a [`group_grid`] dispatch.
pub fn group_index(grid: [u32; 3]) -> String {
    match grid {
        [x, y, _] if y > 1 => format!("(wg_y * {x} + wg_x)"),
        _ => "wg_x".to_string(),
    }
}

/// Binds `gid` to the linear invocation index of a kernel dispatched with
/// [`linear_grid`]`(total)` and returns from invocations past `total`.
pub fn linear_invocation(p: &mut Printer, total: usize) {
    let group = group_index(linear_grid(total));
    let gid = format!("{group} * {LINEAR_WORKGROUP} + lid_x");
    let decl = p.syntax.constant(Ty::I32, "gid", &gid);
    p.line(1, &decl);
    let exit = p.syntax.exit();
    p.line(1, &format!("if (gid >= {total}) {{ {exit} }}"));
}

/// Helpers both dialects define the same way through their [`Syntax`]: NaN-propagating
/// float max/min and clamp (the built-in ones may drop NaN), floor division and remainder
/// of an index, and the logistic function.
pub fn common_helpers(s: &dyn Syntax) -> Vec<(&'static str, String)> {
    let (a, b) = (|| "a".to_string(), || "b".to_string());
    let float2 = [("a", Ty::F32), ("b", Ty::F32)];
    let int2 = [("a", Ty::I32), ("b", Ty::I32)];
    let extreme = |name: &'static str, op: &str| {
        let cond = format!("(a {op} b || {})", s.is_nan("a"));
        let result = s.select(&cond, &a(), &b());
        (name, s.function(Ty::F32, name, &float2, &[], &result))
    };
    let floor_div = {
        // Rounds towards negative infinity for a positive divisor.
        let shift = s.select("(a < 0)", "(b - 1)", "0");
        let result = format!("((a - {shift}) / b)");
        (
            "bb_floor_div",
            s.function(Ty::I32, "bb_floor_div", &int2, &[], &result),
        )
    };
    let floor_rem = (
        "bb_floor_rem",
        s.function(
            Ty::I32,
            "bb_floor_rem",
            &int2,
            &[],
            "(a - bb_floor_div(a, b) * b)",
        ),
    );
    let one = s.float_literal(1.0);
    let sigmoid = format!(
        "({one} / ({one} + {}))",
        s.call(Call::Exp, &["(-x)".into()])
    );
    let clamp = (
        "bb_clamp",
        s.function(
            Ty::F32,
            "bb_clamp",
            &[("x", Ty::F32), ("lo", Ty::F32), ("hi", Ty::F32)],
            &[],
            "bb_min(bb_max(x, lo), hi)",
        ),
    );
    vec![
        extreme("bb_max", ">"),
        extreme("bb_min", "<"),
        clamp,
        floor_div,
        floor_rem,
        (
            "bb_sigmoid",
            s.function(Ty::F32, "bb_sigmoid", &[("x", Ty::F32)], &[], &sigmoid),
        ),
    ]
}

/// Horner evaluation of `coefs[0] + coefs[1]·t + …` (lowest degree first) in the variable
/// `t`, as the CPU code generator evaluates its polynomials.
pub fn horner(s: &dyn Syntax, t: &str, coefs: &[f32]) -> String {
    let mut acc = s.float_literal(*coefs.last().expect("a polynomial has coefficients"));
    for &c in coefs.iter().rev().skip(1) {
        acc = s.call(Call::Fma, &[acc, t.into(), s.float_literal(c)]);
    }
    acc
}

/// A helper `name(x0)` computing `x·P(x²) / Q(x²)` with `x` clamped into `[-clamp, clamp]`
/// (coefficients lowest degree first): the CPU code generator's rational approximations.
pub fn rational_helper(
    s: &dyn Syntax,
    name: &'static str,
    clamp: f32,
    numerator: &[f32],
    denominator: &[f32],
) -> (&'static str, String) {
    let horner = |coefs: &[f32]| horner(s, "x2", coefs);
    let clamped = s.call(
        Call::Clamp,
        &["x0".into(), s.float_literal(-clamp), s.float_literal(clamp)],
    );
    let body = [
        s.constant(Ty::F32, "x", &clamped),
        s.constant(Ty::F32, "x2", "(x * x)"),
        s.constant(Ty::F32, "p", &format!("(x * {})", horner(numerator))),
        s.constant(Ty::F32, "q", &horner(denominator)),
    ];
    (
        name,
        s.function(Ty::F32, name, &[("x0", Ty::F32)], &body, "(p / q)"),
    )
}
