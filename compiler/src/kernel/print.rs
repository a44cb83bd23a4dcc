//! The Kernel IR's text form: one kernel per block, buffers, tables and scratch arrays first,
//! then the loop nest or the contraction with its epilogue. Variables print as `i<id>` with
//! their extent at the binding loop, `let` scalars as `s<id>`, buffers, tables and scratch
//! arrays by name.

use super::{
    Access, Binary, Body, Contraction, Epilogue, Expr, Index, Kernel, Operand, Pred, ProductLayout,
    ReduceOp, Stmt, TableData,
};
use crate::ops::format_float;
use std::fmt::Write;

/// The text form of a kernel.
pub fn print_kernel(k: &Kernel) -> String {
    let mut p = Printer {
        k,
        out: String::new(),
    };
    p.kernel();
    p.out
}

struct Printer<'a> {
    k: &'a Kernel,
    out: String,
}

/// Tables longer than this print their first entries only.
const TABLE_PREVIEW: usize = 12;

fn list<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Printer<'_> {
    fn line(&mut self, depth: usize, text: &str) {
        let _ = writeln!(self.out, "{}{text}", "  ".repeat(depth));
    }

    fn kernel(&mut self) {
        let k = self.k;
        self.line(0, &format!("kernel {} ({}) {{", k.name, k.origin));
        for (i, b) in k.buffers.iter().enumerate() {
            let access = match b.access {
                Access::Read => "read",
                Access::Write => "write",
            };
            self.line(
                1,
                &format!("buffer {i} {}: f32[{}] {access}", b.name, list(&b.shape)),
            );
        }
        for t in &k.tables {
            let (ty, items): (&str, Vec<String>) = match &t.data {
                TableData::Int(v) => ("i64", v.iter().map(|x| x.to_string()).collect()),
                TableData::Float(v) => ("f32", v.iter().map(|&x| float(x)).collect()),
            };
            let more = if items.len() > TABLE_PREVIEW {
                ", ..."
            } else {
                ""
            };
            let shown = list(items.iter().take(TABLE_PREVIEW));
            self.line(
                1,
                &format!("table {}: {ty}[{}] = [{shown}{more}]", t.name, items.len()),
            );
        }
        for (i, t) in k.scratch.iter().enumerate() {
            self.line(1, &format!("scratch {i} {}: f32[{}]", t.name, t.len));
        }
        match &k.body {
            Body::Loops { grid, vector, body } => {
                let kw = if *vector { "grid.vec" } else { "grid" };
                self.line(1, &format!("{kw} i{} < {} {{", grid.id, grid.extent));
                self.stmts(2, body);
                self.line(1, "}");
            }
            Body::Contraction(c) => self.contraction(c),
        }
        self.line(0, "}");
    }

    fn contraction(&mut self, c: &Contraction) {
        let batch = list(c.batch.iter().map(|d| d.extent));
        self.line(
            1,
            &format!(
                "contraction m={} n={} k={} batch=[{batch}] tiles={}x{}x{} {{",
                c.m, c.n, c.k, c.tiling.mc, c.tiling.nc, c.tiling.kc
            ),
        );
        let a = self.operand(&c.a);
        let b = self.operand(&c.b);
        self.line(2, &format!("a = {a}"));
        self.line(2, &format!("b = {b}"));
        let out = &self.k.buffers[c.out].name;
        let out_batch = list(c.batch.iter().map(|d| d.out_stride));
        let layout = match &c.layout {
            ProductLayout::Dense {
                row_stride,
                col_stride,
            } => format!(
                "{out}: dense rows*{row_stride} + cols*{col_stride}, batch strides [{out_batch}]"
            ),
            ProductLayout::Col2im { geometry: g } => format!(
                "{out}: col2im into {}x{} (k {}x{}, s {}x{}, pad {}x{}, dilation {}x{}), batch strides [{out_batch}]",
                g.out_hw[0], g.out_hw[1], g.k[0], g.k[1], g.stride[0], g.stride[1],
                g.pad[0], g.pad[1], g.dilation[0], g.dilation[1]
            ),
        };
        self.line(2, &format!("c = {layout}"));
        if let Some(e) = &c.epilogue {
            self.epilogue(e);
        }
        self.line(1, "}");
    }

    fn operand(&self, op: &Operand) -> String {
        let name = &self.k.buffers[op.buf()].name;
        match op {
            Operand::Strided {
                offset,
                row_stride,
                col_stride,
                batch_strides,
                ..
            } => format!(
                "{name}[{offset} + rows*{row_stride} + cols*{col_stride}], batch strides [{}]",
                list(batch_strides)
            ),
            Operand::Im2col {
                batch_strides,
                geometry: g,
                ..
            } => format!(
                "im2col({name}: {}x{}x{}, k {}x{}, s {}x{}, pad {}x{}, dilation {}x{} -> {}x{}), batch strides [{}]",
                g.channels, g.in_hw[0], g.in_hw[1], g.k[0], g.k[1], g.stride[0], g.stride[1],
                g.pad[0], g.pad[1], g.dilation[0], g.dilation[1], g.out_hw[0], g.out_hw[1],
                list(batch_strides)
            ),
        }
    }

    fn epilogue(&mut self, e: &Epilogue) {
        self.line(
            2,
            &format!(
                "epilogue(i{} < {}, i{} < {}, i{} < {}) {{",
                e.batch.id, e.batch.extent, e.row.id, e.row.extent, e.col.id, e.col.extent
            ),
        );
        self.stmts(3, &e.body);
        self.line(2, "}");
    }

    fn stmts(&mut self, depth: usize, body: &[Stmt]) {
        for s in body {
            match s {
                Stmt::Loop { var, vector, body } => {
                    let kw = if *vector { "for.vec" } else { "for" };
                    self.line(depth, &format!("{kw} i{} < {} {{", var.id, var.extent));
                    self.stmts(depth + 1, body);
                    self.line(depth, "}");
                }
                Stmt::Let { id, value } => {
                    let v = self.expr(value);
                    self.line(depth, &format!("let s{id} = {v}"));
                }
                Stmt::Store { buf, index, value } => {
                    let name = &self.k.buffers[*buf].name;
                    self.store(depth, name, index, value);
                }
                Stmt::ScratchStore {
                    scratch,
                    index,
                    value,
                } => {
                    let name = &self.k.scratch[*scratch as usize].name;
                    self.store(depth, name, index, value);
                }
            }
        }
    }

    fn store(&mut self, depth: usize, target: &str, index: &Index, value: &Expr) {
        let v = self.expr(value);
        let at = index_text(index, self.k);
        self.line(depth, &format!("{target}[{at}] = {v}"));
    }

    fn expr(&self, e: &Expr) -> String {
        match e {
            Expr::Const(c) => float(*c),
            Expr::Load { buf, index } => {
                format!(
                    "{}[{}]",
                    self.k.buffers[*buf].name,
                    index_text(index, self.k)
                )
            }
            Expr::Table { table, index } => format!(
                "{}[{}]",
                self.k.tables[*table as usize].name,
                index_text(index, self.k)
            ),
            Expr::Scalar(id) => format!("s{id}"),
            Expr::Scratch { scratch, index } => format!(
                "{}[{}]",
                self.k.scratch[*scratch as usize].name,
                index_text(index, self.k)
            ),
            Expr::Unary(op, x) => format!("{}({})", op.name(), self.expr(x)),
            Expr::Binary(op @ (Binary::Max | Binary::Min | Binary::Pow), a, b) => {
                format!("{}({}, {})", op.name(), self.expr(a), self.expr(b))
            }
            Expr::Binary(op, a, b) => {
                format!("({} {} {})", self.expr(a), op.name(), self.expr(b))
            }
            Expr::Select {
                pred,
                then,
                otherwise,
            } => {
                let cond = match &**pred {
                    Pred::Index(c) => cond_text(c, self.k),
                    Pred::Float(op, a, b) => {
                        format!("{} {} {}", self.expr(a), op.symbol(), self.expr(b))
                    }
                };
                format!(
                    "select({cond}, {}, {})",
                    self.expr(then),
                    self.expr(otherwise)
                )
            }
            Expr::Reduce { op, vars, body } => {
                let name = match op {
                    ReduceOp::Sum => "sum",
                    ReduceOp::Max => "max",
                };
                let vars = list(vars.iter().map(|v| format!("i{} < {}", v.id, v.extent)));
                format!("{name}({vars}: {})", self.expr(body))
            }
        }
    }
}

fn float(v: f32) -> String {
    format_float(f64::from(v))
}

fn cond_text(c: &super::Cond, k: &Kernel) -> String {
    c.0.iter()
        .map(|(op, a, b)| format!("{} {} {}", index_text(a, k), op.symbol(), index_text(b, k)))
        .collect::<Vec<_>>()
        .join(" && ")
}

fn index_text(x: &Index, k: &Kernel) -> String {
    match x {
        Index::Const(c) => c.to_string(),
        Index::Var(v) => format!("i{}", v.id),
        Index::Sum(terms, c) => {
            let mut s = String::new();
            for (i, (t, coef)) in terms.iter().enumerate() {
                let atom = index_text(t, k);
                let (neg, mag) = (*coef < 0, coef.unsigned_abs());
                if i > 0 {
                    s.push_str(if neg { " - " } else { " + " });
                } else if neg {
                    s.push('-');
                }
                s.push_str(&atom);
                if mag != 1 {
                    let _ = write!(s, "*{mag}");
                }
            }
            match *c {
                0 => {}
                c if c < 0 => {
                    let _ = write!(s, " - {}", -c);
                }
                c => {
                    let _ = write!(s, " + {c}");
                }
            }
            s
        }
        Index::Div(a, d) => format!("({}) / {d}", index_text(a, k)),
        Index::Rem(a, d) => format!("({}) % {d}", index_text(a, k)),
        Index::Min(a, b) => format!("min({}, {})", index_text(a, k), index_text(b, k)),
        Index::Max(a, b) => format!("max({}, {})", index_text(a, k), index_text(b, k)),
        Index::Lookup(t, a) => format!("{}[{}]", k.tables[t.id as usize].name, index_text(a, k)),
    }
}
