//! The Kernel IR: the one description of a kernel (a fusion group or a single op) that every
//! code generator reads (Cranelift today; WGSL and CUDA C later). `lower` builds it from the
//! Graph IR; `print` gives its text form.
//!
//! # Model
//!
//! A [`Kernel`] has *buffers* (its arguments: the group's operands in order, then its output;
//! every buffer is a dense row-major f32 tensor), constant *tables* (per-index weights and
//! source indices of resampling and pooling, baked into the code) and a [`Body`]:
//!
//! * [`Body::Loops`]: a *grid* loop whose iterations are independent, holding statements:
//!   nested loops with static extents, `let` bindings of scalars, stores to buffers and to
//!   *scratch* arrays (see below). Expressions are
//!   trees of loads, constants, arithmetic, named intrinsics (exp, tanh, erf, sigmoid, sqrt,
//!   ...), selects and reductions (sum/max over reduction variables). Index expressions are
//!   affine in loop variables plus floor division and remainder by constants, min/max (clamps),
//!   integer table lookups; `Select` conditions are conjunctions of index comparisons (bounds of
//!   padding windows) or a float comparison. Both arms of a select are evaluated: a load under
//!   a bounds condition uses a clamped index, so every access stays inside its buffer.
//!   A loop marked `vector` has independent iterations and is the one a CPU code generator
//!   runs four lanes at a time; a GPU generator maps the grid to its invocations instead.
//!   A [`Scratch`] array is kernel-local memory private to one grid iteration (a row of
//!   intermediate values computed once and read many times, such as the attention scores of
//!   one query): it starts undefined in every iteration, so an iteration reads only elements
//!   it wrote, and it is never visible outside the kernel.
//! * [`Body::Contraction`]: a matrix product `C[b] = A[b] · B[b]` (M×K by K×N per batch
//!   index) whose operands are strided views or the im2col view of a convolution input, with
//!   tiling hints and an elementwise [`Epilogue`] that is itself Kernel IR, applied per output
//!   tile while the tile is in cache.
//!
//! # The CPU entry ABI
//!
//! A loop kernel compiles to `unsafe extern "C" fn(bufs: *const *mut f32, start: usize,
//! end: usize)`: `bufs[i]` points at buffer `i` (`Kernel::buffers` order, each holding
//! `Buffer::len()` f32s, inputs never written), and the call computes grid iterations
//! `start..end` (clamped to the grid extent). Distinct grid iterations write disjoint output
//! elements and read no element another iteration writes, so a runtime may split
//! `0..grid_extent` across threads in any way.
//!
//! An epilogue compiles to `unsafe extern "C" fn(bufs: *const *mut f32, batch: usize,
//! row_start: usize, row_end: usize, col_start: usize, col_end: usize)`. The GEMM driver first
//! writes the raw products of rows `row_start..row_end` and columns `col_start..col_end` of
//! batch entry `batch` into the output buffer (element `(b, i, j)` at
//! `b·M·N + i·N + j` for a dense output), then calls the epilogue, which rewrites exactly those
//! elements in place, reading any other buffer it needs. The product must not be read by the
//! driver afterwards.

pub mod index;
pub mod lower;
mod print;

pub use index::{CmpOp, Cond, Index, TableRef, Var};
pub use lower::{lower_node, LowerError};
pub use print::print_kernel;

/// Position of a buffer in [`Kernel::buffers`] (and in the `bufs` argument of the ABI).
pub type BufId = usize;
/// Position of a scratch array in [`Kernel::scratch`].
pub type ScratchId = u32;

/// The most elements one scratch array may hold: scratch lives on the stack of whoever runs
/// a grid iteration (a CPU thread, a GPU invocation's private memory), so it is kept small.
pub const MAX_SCRATCH_LEN: usize = 1 << 14;
/// A `let`-bound scalar, unique within a kernel.
pub type ScalarId = u32;

/// Whether a kernel reads or writes a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    /// Written (and possibly read back) by the kernel: its output.
    Write,
}

/// A kernel argument: a dense row-major f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Buffer {
    pub name: String,
    pub shape: Vec<usize>,
    pub access: Access,
}

impl Buffer {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row-major strides in elements.
    pub fn strides(&self) -> Vec<usize> {
        let mut s = vec![1; self.shape.len()];
        for i in (0..self.shape.len().saturating_sub(1)).rev() {
            s[i] = s[i + 1] * self.shape[i + 1];
        }
        s
    }
}

/// A kernel-local f32 array, private to one grid iteration and undefined at its start.
#[derive(Clone, Debug, PartialEq)]
pub struct Scratch {
    pub name: String,
    /// Element count, at most [`MAX_SCRATCH_LEN`].
    pub len: usize,
}

/// Constant data baked into a kernel.
#[derive(Clone, Debug, PartialEq)]
pub enum TableData {
    /// Source indices (resampling, adaptive pooling bins).
    Int(Vec<i64>),
    /// Per-index weights (bilinear lambdas, pooling divisors, Haar signs).
    Float(Vec<f32>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    pub name: String,
    pub data: TableData,
}

impl Table {
    pub fn len(&self) -> usize {
        match &self.data {
            TableData::Int(v) => v.len(),
            TableData::Float(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Functions of one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unary {
    Neg,
    Abs,
    Sqrt,
    /// 1 / sqrt(x), computed as a division (not an estimate).
    Rsqrt,
    Exp,
    /// e^x − 1, accurate near 0 where `exp(x) − 1` loses every digit (ELU's negative side).
    Expm1,
    Log,
    Tanh,
    Erf,
    Sigmoid,
}

impl Unary {
    pub fn name(self) -> &'static str {
        match self {
            Unary::Neg => "neg",
            Unary::Abs => "abs",
            Unary::Sqrt => "sqrt",
            Unary::Rsqrt => "rsqrt",
            Unary::Exp => "exp",
            Unary::Expm1 => "expm1",
            Unary::Log => "log",
            Unary::Tanh => "tanh",
            Unary::Erf => "erf",
            Unary::Sigmoid => "sigmoid",
        }
    }
}

/// Functions of two values. `Max` and `Min` propagate NaN (like `torch.maximum`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Pow,
}

impl Binary {
    pub fn name(self) -> &'static str {
        match self {
            Binary::Add => "+",
            Binary::Sub => "-",
            Binary::Mul => "*",
            Binary::Div => "/",
            Binary::Max => "max",
            Binary::Min => "min",
            Binary::Pow => "pow",
        }
    }
}

/// How a reduction combines values. `Max` propagates NaN and starts at −inf.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReduceOp {
    Sum,
    Max,
}

/// A select condition: index comparisons (all must hold) or a float comparison.
#[derive(Clone, Debug, PartialEq)]
pub enum Pred {
    Index(Cond),
    Float(CmpOp, Box<Expr>, Box<Expr>),
}

/// A scalar f32 expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Const(f32),
    Load {
        buf: BufId,
        index: Index,
    },
    /// Element `index` of a float table.
    Table {
        table: u32,
        index: Index,
    },
    /// A `let`-bound scalar.
    Scalar(ScalarId),
    /// Element `index` of a scratch array, written earlier in the same grid iteration.
    Scratch {
        scratch: ScratchId,
        index: Index,
    },
    Unary(Unary, Box<Expr>),
    Binary(Binary, Box<Expr>, Box<Expr>),
    /// `then` where the predicate holds, else `otherwise`; both are evaluated.
    Select {
        pred: Box<Pred>,
        then: Box<Expr>,
        otherwise: Box<Expr>,
    },
    /// `op` over every combination of `vars` (outermost first) of `body`.
    Reduce {
        op: ReduceOp,
        vars: Vec<Var>,
        body: Box<Expr>,
    },
}

impl Expr {
    pub fn load(buf: BufId, index: impl Into<Index>) -> Expr {
        Expr::Load {
            buf,
            index: index.into(),
        }
    }

    pub fn unary(op: Unary, x: Expr) -> Expr {
        Expr::Unary(op, Box::new(x))
    }

    pub fn binary(op: Binary, a: Expr, b: Expr) -> Expr {
        Expr::Binary(op, Box::new(a), Box::new(b))
    }

    /// `then` where `cond` holds, else `otherwise` (just `then` when it always holds).
    pub fn select_index(cond: Cond, then: Expr, otherwise: Expr) -> Expr {
        if cond.is_always() {
            return then;
        }
        Expr::Select {
            pred: Box::new(Pred::Index(cond)),
            then: Box::new(then),
            otherwise: Box::new(otherwise),
        }
    }

    pub fn select_float(op: CmpOp, a: Expr, b: Expr, then: Expr, otherwise: Expr) -> Expr {
        Expr::Select {
            pred: Box::new(Pred::Float(op, Box::new(a), Box::new(b))),
            then: Box::new(then),
            otherwise: Box::new(otherwise),
        }
    }

    pub fn reduce(op: ReduceOp, vars: Vec<Var>, body: Expr) -> Expr {
        if vars.is_empty() {
            return body;
        }
        Expr::Reduce {
            op,
            vars,
            body: Box::new(body),
        }
    }

    /// Calls `f` on every sub-expression, this one first.
    pub fn visit(&self, f: &mut dyn FnMut(&Expr)) {
        f(self);
        match self {
            Expr::Const(_)
            | Expr::Load { .. }
            | Expr::Table { .. }
            | Expr::Scalar(_)
            | Expr::Scratch { .. } => {}
            Expr::Unary(_, x) => x.visit(f),
            Expr::Binary(_, a, b) => {
                a.visit(f);
                b.visit(f);
            }
            Expr::Select {
                pred,
                then,
                otherwise,
            } => {
                if let Pred::Float(_, a, b) = &**pred {
                    a.visit(f);
                    b.visit(f);
                }
                then.visit(f);
                otherwise.visit(f);
            }
            Expr::Reduce { body, .. } => body.visit(f),
        }
    }

    /// The expression with variable `v` replaced by `by` in every index; a select whose
    /// condition the new ranges decide becomes the arm it takes.
    pub fn substitute(&self, v: Var, by: &Index) -> Expr {
        let sub = |x: &Index| x.substitute(v, by);
        match self {
            Expr::Const(_) | Expr::Scalar(_) => self.clone(),
            Expr::Load { buf, index } => Expr::Load {
                buf: *buf,
                index: sub(index),
            },
            Expr::Table { table, index } => Expr::Table {
                table: *table,
                index: sub(index),
            },
            Expr::Scratch { scratch, index } => Expr::Scratch {
                scratch: *scratch,
                index: sub(index),
            },
            Expr::Unary(op, x) => Expr::unary(*op, x.substitute(v, by)),
            Expr::Binary(op, a, b) => Expr::binary(*op, a.substitute(v, by), b.substitute(v, by)),
            Expr::Select {
                pred,
                then,
                otherwise,
            } => match &**pred {
                Pred::Index(c) => match c.substitute(v, by) {
                    Some(c) => {
                        Expr::select_index(c, then.substitute(v, by), otherwise.substitute(v, by))
                    }
                    None => otherwise.substitute(v, by),
                },
                Pred::Float(op, a, b) => Expr::select_float(
                    *op,
                    a.substitute(v, by),
                    b.substitute(v, by),
                    then.substitute(v, by),
                    otherwise.substitute(v, by),
                ),
            },
            Expr::Reduce { op, vars, body } => {
                Expr::reduce(*op, vars.clone(), body.substitute(v, by))
            }
        }
    }
}

impl std::ops::Add for Expr {
    type Output = Expr;
    fn add(self, b: Expr) -> Expr {
        Expr::binary(Binary::Add, self, b)
    }
}

impl std::ops::Sub for Expr {
    type Output = Expr;
    fn sub(self, b: Expr) -> Expr {
        Expr::binary(Binary::Sub, self, b)
    }
}

impl std::ops::Mul for Expr {
    type Output = Expr;
    fn mul(self, b: Expr) -> Expr {
        Expr::binary(Binary::Mul, self, b)
    }
}

impl std::ops::Div for Expr {
    type Output = Expr;
    fn div(self, b: Expr) -> Expr {
        Expr::binary(Binary::Div, self, b)
    }
}

/// A statement of a loop body.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `for var in 0..var.extent`; `vector` marks the loop a CPU generator runs four lanes
    /// at a time (its iterations are independent; at most one per nest).
    Loop {
        var: Var,
        vector: bool,
        body: Vec<Stmt>,
    },
    Let {
        id: ScalarId,
        value: Expr,
    },
    Store {
        buf: BufId,
        index: Index,
        value: Expr,
    },
    /// Writes element `index` of a scratch array.
    ScratchStore {
        scratch: ScratchId,
        index: Index,
        value: Expr,
    },
}

/// A rewrite of every index and expression of a statement, applied by [`Stmt::rewrite`].
pub trait StmtRewrite {
    fn index(&mut self, x: &Index) -> Index;
    fn expr(&mut self, e: &Expr) -> Expr;
}

impl Stmt {
    /// The statement with its indices and expressions (those of nested loops too) rewritten
    /// by `r`; loops keep their variables.
    pub fn rewrite(&self, r: &mut impl StmtRewrite) -> Stmt {
        match self {
            Stmt::Loop { var, vector, body } => Stmt::Loop {
                var: *var,
                vector: *vector,
                body: body.iter().map(|s| s.rewrite(r)).collect(),
            },
            Stmt::Let { id, value } => Stmt::Let {
                id: *id,
                value: r.expr(value),
            },
            Stmt::Store { buf, index, value } => Stmt::Store {
                buf: *buf,
                index: r.index(index),
                value: r.expr(value),
            },
            Stmt::ScratchStore {
                scratch,
                index,
                value,
            } => Stmt::ScratchStore {
                scratch: *scratch,
                index: r.index(index),
                value: r.expr(value),
            },
        }
    }

    /// The statement with variable `v` replaced by `by` (see [`Expr::substitute`]).
    pub fn substitute(&self, v: Var, by: &Index) -> Stmt {
        struct Substitute<'a>(Var, &'a Index);
        impl StmtRewrite for Substitute<'_> {
            fn index(&mut self, x: &Index) -> Index {
                x.substitute(self.0, self.1)
            }
            fn expr(&mut self, e: &Expr) -> Expr {
                e.substitute(self.0, self.1)
            }
        }
        self.rewrite(&mut Substitute(v, by))
    }

    /// Calls `f` on every expression of the statement and of those nested in it.
    pub fn visit_exprs(&self, f: &mut dyn FnMut(&Expr)) {
        match self {
            Stmt::Loop { body, .. } => body.iter().for_each(|s| s.visit_exprs(f)),
            Stmt::Let { value, .. }
            | Stmt::Store { value, .. }
            | Stmt::ScratchStore { value, .. } => value.visit(f),
        }
    }
}

/// A strided or im2col view of a contraction operand as a matrix of `rows × cols` per batch
/// entry.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// Element `(b, r, c)` at `buf[offset + Σ b_i·batch_strides[i] + r·row_stride +
    /// c·col_stride]`, with `b_i` the batch index decomposed over `Contraction::batch`.
    Strided {
        buf: BufId,
        offset: usize,
        row_stride: usize,
        col_stride: usize,
        batch_strides: Vec<usize>,
    },
    /// The im2col matrix of an NCHW convolution input: row `r = (c, i, j)` (channel, kernel
    /// row, kernel column, row-major over `channels × k`), column `q = (y, x)` over the output
    /// positions; the element is `input[c, y·stride + i·dilation − pad, x·stride +
    /// j·dilation − pad]`, or 0 in the padding. `batch_strides` move the channel plane origin.
    Im2col {
        buf: BufId,
        batch_strides: Vec<usize>,
        geometry: ConvGeometry,
    },
}

impl Operand {
    pub fn buf(&self) -> BufId {
        match self {
            Operand::Strided { buf, .. } | Operand::Im2col { buf, .. } => *buf,
        }
    }
}

/// The sliding-window geometry of a convolution over one image and channel group.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvGeometry {
    pub channels: usize,
    pub in_hw: [usize; 2],
    pub k: [usize; 2],
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dilation: [usize; 2],
    pub out_hw: [usize; 2],
}

/// One batch axis of a contraction, with how far each operand moves along it.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchDim {
    pub extent: usize,
    pub out_stride: usize,
}

/// Where the product goes.
#[derive(Clone, Debug, PartialEq)]
pub enum ProductLayout {
    /// Element `(b, i, j)` at `out[Σ b_k·out_stride_k + i·row_stride + j·col_stride]`.
    Dense {
        row_stride: usize,
        col_stride: usize,
    },
    /// Transposed convolution: row `i = (oc, ki, kj)` and column `j = (y, x)` (an input
    /// position) scatter-add into `out[oc, y·stride + ki·dilation − pad, x·stride +
    /// kj·dilation − pad]` when that lies inside the output (col2im). The output starts at
    /// zero; the epilogue runs once over the whole output after the scatter.
    Col2im { geometry: ConvGeometry },
}

/// Tiling hints for the GEMM driver (block sizes in rows, columns and depth).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    pub mc: usize,
    pub nc: usize,
    pub kc: usize,
}

/// The elementwise epilogue of a contraction, applied in place per output tile: statements
/// over the element `(batch, row, col)` of the output viewed as `[batch, rows, cols]` (the
/// variables' extents). For a dense product these are the product's batch entry, row and
/// column; after a col2im scatter they are (image, output channel, output position).
#[derive(Clone, Debug, PartialEq)]
pub struct Epilogue {
    pub batch: Var,
    pub row: Var,
    pub col: Var,
    pub body: Vec<Stmt>,
}

/// `out[b] = a[b] · b[b]` for every batch entry, `m × k` by `k × n`, then the epilogue.
#[derive(Clone, Debug, PartialEq)]
pub struct Contraction {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Batch axes, outermost first (empty: one product).
    pub batch: Vec<BatchDim>,
    pub a: Operand,
    pub b: Operand,
    /// Batch strides of `a` and `b` are in the operands; the output's here.
    pub out: BufId,
    pub layout: ProductLayout,
    pub tiling: Tiling,
    pub epilogue: Option<Epilogue>,
}

impl Contraction {
    pub fn batch_len(&self) -> usize {
        self.batch.iter().map(|d| d.extent).product()
    }

    /// Decomposes a flat batch index over the batch axes, outermost first.
    pub fn batch_coords(&self, mut b: usize) -> Vec<usize> {
        let mut coords = vec![0; self.batch.len()];
        for (i, d) in self.batch.iter().enumerate().rev() {
            coords[i] = b % d.extent;
            b /= d.extent;
        }
        coords
    }

    /// The reference semantics of the product (no epilogue): a naive triple loop with f64
    /// accumulation over `bufs` (indexed like the kernel's buffers). For tests and as the
    /// definition a GEMM driver must match.
    pub fn reference_product(&self, bufs: &mut [Vec<f32>]) {
        let element =
            |op: &Operand, bufs: &[Vec<f32>], coords: &[usize], r: usize, c: usize| match op {
                Operand::Strided {
                    buf,
                    offset,
                    row_stride,
                    col_stride,
                    batch_strides,
                } => {
                    let base: usize = coords.iter().zip(batch_strides).map(|(i, s)| i * s).sum();
                    bufs[*buf][offset + base + r * row_stride + c * col_stride]
                }
                Operand::Im2col {
                    buf,
                    batch_strides,
                    geometry: g,
                } => {
                    let base: usize = coords.iter().zip(batch_strides).map(|(i, s)| i * s).sum();
                    let (ch, rest) = (r / (g.k[0] * g.k[1]), r % (g.k[0] * g.k[1]));
                    let (ki, kj) = (rest / g.k[1], rest % g.k[1]);
                    let (y, x) = (c / g.out_hw[1], c % g.out_hw[1]);
                    let yy = (y * g.stride[0] + ki * g.dilation[0]) as i64 - g.pad[0] as i64;
                    let xx = (x * g.stride[1] + kj * g.dilation[1]) as i64 - g.pad[1] as i64;
                    let [h, w] = g.in_hw;
                    if yy < 0 || xx < 0 || yy >= h as i64 || xx >= w as i64 {
                        0.0
                    } else {
                        bufs[*buf][base + (ch * h + yy as usize) * w + xx as usize]
                    }
                }
            };
        if let ProductLayout::Col2im { .. } = self.layout {
            bufs[self.out].fill(0.0);
        }
        for b in 0..self.batch_len() {
            let coords = self.batch_coords(b);
            let out_base: usize = coords
                .iter()
                .zip(&self.batch)
                .map(|(i, d)| i * d.out_stride)
                .sum();
            for i in 0..self.m {
                for j in 0..self.n {
                    let acc: f64 = (0..self.k)
                        .map(|p| {
                            f64::from(element(&self.a, bufs, &coords, i, p))
                                * f64::from(element(&self.b, bufs, &coords, p, j))
                        })
                        .sum();
                    match &self.layout {
                        ProductLayout::Dense {
                            row_stride,
                            col_stride,
                        } => {
                            bufs[self.out][out_base + i * row_stride + j * col_stride] = acc as f32;
                        }
                        ProductLayout::Col2im { geometry: g } => {
                            let (oc, rest) = (i / (g.k[0] * g.k[1]), i % (g.k[0] * g.k[1]));
                            let (ki, kj) = (rest / g.k[1], rest % g.k[1]);
                            let (y, x) = (j / g.in_hw[1], j % g.in_hw[1]);
                            let yy =
                                (y * g.stride[0] + ki * g.dilation[0]) as i64 - g.pad[0] as i64;
                            let xx =
                                (x * g.stride[1] + kj * g.dilation[1]) as i64 - g.pad[1] as i64;
                            let [oh, ow] = g.out_hw;
                            if yy >= 0 && xx >= 0 && yy < oh as i64 && xx < ow as i64 {
                                let at = out_base + (oc * oh + yy as usize) * ow + xx as usize;
                                bufs[self.out][at] += acc as f32;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// What a kernel computes.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// `for grid in 0..grid.extent { body }` with independent iterations.
    Loops {
        grid: Var,
        vector: bool,
        body: Vec<Stmt>,
    },
    Contraction(Box<Contraction>),
}

/// One kernel: a fusion group or a single op.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// The Graph IR value it computes.
    pub name: String,
    /// What it came from: the fusion group's kind or the op's name.
    pub origin: String,
    pub buffers: Vec<Buffer>,
    pub tables: Vec<Table>,
    /// Kernel-local arrays of a loop kernel (none for a contraction).
    pub scratch: Vec<Scratch>,
    pub body: Body,
}

impl Kernel {
    /// The output buffer (always the last).
    pub fn output(&self) -> BufId {
        self.buffers.len() - 1
    }

    /// The number of grid iterations a loop kernel's entry covers (1 for a contraction).
    pub fn grid_extent(&self) -> usize {
        match &self.body {
            Body::Loops { grid, .. } => grid.extent,
            Body::Contraction(_) => 1,
        }
    }
}
