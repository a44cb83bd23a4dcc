//! Lowering from the Graph IR to the Kernel IR: one op node or one fusion group becomes one
//! [`Kernel`].
//!
//! The core is a *value at an index* view of the graph (`pointwise.rs`): the value of a node
//! at a multi-index is an expression over its operands' values at derived indices, so
//! elementwise and broadcasting ops, activations, layout ops, pooling, resampling, wavelets,
//! convolution (as a direct sum over channels and taps) and reductions all inline into the
//! consumer's loop. What cannot be inlined has its own shape: statistics normalisations and
//! softmax (`stats.rs`) compute their statistics per row and rewrite the output in place,
//! contractions (`contraction.rs`) become a [`Contraction`](super::Contraction) whose
//! epilogue is the inlined elementwise chain after it, and attention (`attention.rs`) is a
//! loop kernel over query rows keeping each row's scores in a scratch array.
//!
//! A group of several convolutions summed (an `fff` group: per-input convolutions over
//! weight slices, some reading their input through a resize or a per-channel op computed in
//! the group) is one loop kernel over the output computing every convolution directly, the
//! reads, bias and epilogue inlined, rather than a sequence of GEMMs: a GEMM reads its
//! operands from buffers, so the resized or normalised inputs would have to be written out,
//! which is what the fusion avoids. A single contraction reading a value computed inside its
//! group takes the same direct form. Costly per-channel invariants of such reads (a
//! BatchNorm's scale) are tabulated once per grid iteration (`invariants.rs`).
//!
//! A node the lowering does not cover is a [`LowerError::Unsupported`] naming the op, so an
//! executor can fall back to the reference implementation and say so.

mod attention;
mod contraction;
mod invariants;
mod pointwise;
mod stats;

use super::index::{self, Index, Var};
use super::{
    Access, Body, BufId, Buffer, Expr, Kernel, ScalarId, Scratch, ScratchId, Stmt, Table, TableData,
};
use crate::ir::{Graph, NodeKind, ValueId};
use std::collections::HashMap;

/// Why a node has no kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LowerError {
    /// `op` (an op name or `fused KIND`) is not lowered; `reason` says what is missing.
    Unsupported { op: String, reason: String },
}

impl std::fmt::Display for LowerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LowerError::Unsupported { op, reason } => {
                write!(f, "no kernel for `{op}`: {reason}")
            }
        }
    }
}

impl std::error::Error for LowerError {}

pub(crate) fn unsupported(op: &str, reason: impl Into<String>) -> LowerError {
    LowerError::Unsupported {
        op: op.to_string(),
        reason: reason.into(),
    }
}

/// Lowers node `id` of `graph` (an op application or a fusion group) to a kernel whose
/// buffers are the node's operands in order, then its result.
pub fn lower_node(graph: &Graph, id: ValueId) -> Result<Kernel, LowerError> {
    let node = graph.node(id);
    let operands = graph.inputs(id);
    let (body, output, origin): (&Graph, ValueId, String) = match &node.kind {
        NodeKind::Op { op, .. } => (graph, id, op.name.to_string()),
        NodeKind::Fused { kind, body } => {
            let out = body
                .outputs
                .first()
                .ok_or_else(|| unsupported(&format!("fused {kind}"), "the group has no output"))?;
            (body, out.value, kind.clone())
        }
        NodeKind::Input | NodeKind::Param { .. } | NodeKind::Const { .. } => {
            return Err(unsupported(
                &node.name,
                "graph inputs and parameters are not computed",
            ))
        }
    };
    // The values the kernel reads from its buffers: the node's operands, or the group's inputs.
    let leaves: Vec<ValueId> = match &node.kind {
        NodeKind::Fused { body, .. } => body.inputs.clone(),
        _ => operands.clone(),
    };
    let mut buffers: Vec<Buffer> = operands
        .iter()
        .enumerate()
        .map(|(i, &o)| Buffer {
            name: format!("in{i}"),
            shape: graph.node(o).shape.clone(),
            access: Access::Read,
        })
        .collect();
    buffers.push(Buffer {
        name: "out".into(),
        shape: node.shape.clone(),
        access: Access::Write,
    });
    let mut leaf_bufs = HashMap::new();
    for (i, &leaf) in leaves.iter().enumerate() {
        leaf_bufs.entry(leaf).or_insert(i);
    }
    let mut cx = Lowering {
        graph: body,
        leaves: leaf_bufs,
        buffers,
        tables: Vec::new(),
        scratch: Vec::new(),
        next_var: 0,
        next_scalar: 0,
        lets: Vec::new(),
        memo: HashMap::new(),
        in_reduce: 0,
        overrides: HashMap::new(),
        origin: origin.clone(),
    };
    let body = cx.lower_output(output)?;
    let body = invariants::tabulate(&mut cx, body);
    Ok(Kernel {
        name: node.name.clone(),
        origin,
        buffers: cx.buffers,
        tables: cx.tables,
        scratch: cx.scratch,
        body,
    })
}

/// What a node's value is replaced by while lowering.
#[derive(Clone, Debug)]
pub(crate) enum Override {
    /// The product of a contraction in its epilogue: read from a buffer.
    Buffer {
        /// The value is read from this buffer at the node's row-major index...
        buf: BufId,
        /// ...plus `bias[index[axis]]` when set: `(bias buffer, axis)`.
        bias: Option<(BufId, usize)>,
        /// The buffer holds the value permuted: element `index` is at buffer index
        /// `[index[perm[0]], index[perm[1]], ...]` (a contraction writing a permuted output).
        perm: Option<Vec<usize>>,
    },
    /// The value at `index`, the one element the statement being built computes, is `value`
    /// (a row computed by hand, such as an attention output, handed to the chain after it).
    Element { index: Vec<Index>, value: Expr },
}

/// The state of one kernel's lowering.
pub(crate) struct Lowering<'g> {
    pub graph: &'g Graph,
    /// Leaf values and the buffer holding each.
    pub leaves: HashMap<ValueId, BufId>,
    pub buffers: Vec<Buffer>,
    pub tables: Vec<Table>,
    pub scratch: Vec<Scratch>,
    next_var: u32,
    next_scalar: u32,
    /// `let`s the expressions built so far depend on, to emit before their statement.
    lets: Vec<Stmt>,
    /// Values already bound at an index in the current statement.
    memo: HashMap<(ValueId, Vec<Index>), Expr>,
    /// How many reduction bodies enclose the expression being built (no `let`s there).
    in_reduce: usize,
    pub overrides: HashMap<ValueId, Override>,
    /// The group kind or op name, for error messages.
    pub origin: String,
}

impl Lowering<'_> {
    pub fn var(&mut self, extent: usize) -> Var {
        self.next_var += 1;
        Var {
            id: self.next_var - 1,
            extent,
        }
    }

    /// Whether the kernel is a fusion group (its graph is the group's body).
    fn origin_is_group(&self) -> bool {
        crate::ops::lookup(&self.origin).is_none()
    }

    pub fn output_buf(&self) -> BufId {
        self.buffers.len() - 1
    }

    pub fn shape(&self, id: ValueId) -> &[usize] {
        &self.graph.node(id).shape
    }

    pub fn int_table(&mut self, name: &str, data: Vec<i64>) -> index::TableRef {
        let (min, max) = (
            data.iter().copied().min().unwrap_or(0),
            data.iter().copied().max().unwrap_or(0),
        );
        self.tables.push(Table {
            name: name.to_string(),
            data: TableData::Int(data),
        });
        index::TableRef {
            id: self.tables.len() as u32 - 1,
            min,
            max,
        }
    }

    /// A new scratch array of `len` elements.
    pub fn scratch(&mut self, name: &str, len: usize) -> ScratchId {
        self.scratch.push(Scratch {
            name: name.to_string(),
            len,
        });
        self.scratch.len() as ScratchId - 1
    }

    pub fn float_table(&mut self, name: &str, data: Vec<f32>) -> u32 {
        self.tables.push(Table {
            name: name.to_string(),
            data: TableData::Float(data),
        });
        self.tables.len() as u32 - 1
    }

    /// Binds `e` to a `let` (emitted before the current statement) so it is computed once,
    /// unless it is trivial or inside a reduction body.
    pub fn bind(&mut self, e: Expr) -> Expr {
        if self.in_reduce > 0 || matches!(e, Expr::Const(_) | Expr::Load { .. } | Expr::Scalar(_)) {
            return e;
        }
        let id: ScalarId = self.next_scalar;
        self.next_scalar += 1;
        self.lets.push(Stmt::Let { id, value: e });
        Expr::Scalar(id)
    }

    /// Builds a reduction body with `let`s disabled.
    pub fn in_reduction<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        self.in_reduce += 1;
        let r = f(self);
        self.in_reduce -= 1;
        r
    }

    /// `let`s made since the last statement, followed by `stmt`.
    pub fn statement(&mut self, stmt: Stmt) -> Vec<Stmt> {
        self.memo.clear();
        let mut out = std::mem::take(&mut self.lets);
        out.push(stmt);
        out
    }

    /// A `let` statement binding `value` now; returns the scalar.
    pub fn let_now(&mut self, value: Expr, into: &mut Vec<Stmt>) -> Expr {
        let id: ScalarId = self.next_scalar;
        self.next_scalar += 1;
        into.append(&mut std::mem::take(&mut self.lets));
        into.push(Stmt::Let { id, value });
        Expr::Scalar(id)
    }

    /// Lowers the kernel computing `out` (the body's output node).
    fn lower_output(&mut self, out: ValueId) -> Result<Body, LowerError> {
        let group = !self.leaves.is_empty() && self.origin_is_group();
        if group {
            if let Some(body) = attention::lower(self, out)? {
                return Ok(body);
            }
            let products = self
                .graph
                .nodes
                .node_indices()
                .filter(|&n| {
                    self.graph.node(n).op().is_some_and(|op| {
                        contraction::CONTRACTIONS.contains(&op.name) && !self.is_depthwise(n)
                    })
                })
                .count();
            // Several products summed (FFF): every product computed directly in one loop nest.
            if products > 1 {
                return self.pointwise_kernel(out);
            }
        }
        if let Some(body) = contraction::lower(self, out)? {
            return Ok(body);
        }
        if let Some(body) = stats::lower(self, out)? {
            return Ok(body);
        }
        self.pointwise_kernel(out)
    }

    /// A kernel storing `value_at(out, index)` at every output element. The innermost output
    /// axes are merged into one vector loop as long as every access stays affine in it.
    fn pointwise_kernel(&mut self, out: ValueId) -> Result<Body, LowerError> {
        let shape = match self.shape(out) {
            [] => vec![1],
            s => s.to_vec(),
        };
        // Try merging one more axis into the vector loop at a time; keep the widest merge
        // whose accesses stay affine, then build it for real.
        let mut split = shape.len() - 1;
        while split > 0 {
            let mark = (self.tables.len(), self.next_var, self.next_scalar);
            let affine = self.pointwise_body(out, &shape, split - 1)?.1;
            self.tables.truncate(mark.0);
            (self.next_var, self.next_scalar) = (mark.1, mark.2);
            if !affine {
                break;
            }
            split -= 1;
        }
        Ok(self.pointwise_body(out, &shape, split)?.0)
    }

    /// The body with output axes `split..` merged into the vector loop, and whether every
    /// buffer access is affine in the vector variable.
    fn pointwise_body(
        &mut self,
        out: ValueId,
        shape: &[usize],
        split: usize,
    ) -> Result<(Body, bool), LowerError> {
        let outer: usize = shape[..split].iter().product();
        let inner: usize = shape[split..].iter().product();
        let inner_var = self.var(inner);
        let mut idx = Vec::new();
        let grid = if split == 0 {
            inner_var
        } else {
            let g = self.var(outer);
            idx.extend(unflatten(&Index::Var(g), &shape[..split]));
            g
        };
        idx.extend(unflatten(&Index::Var(inner_var), &shape[split..]));
        let value = self.value_at(out, &idx)?;
        let store_index = flatten(&idx, shape);
        let stmts = self.statement(super::Stmt::Store {
            buf: self.output_buf(),
            index: store_index,
            value,
        });
        let affine = stmts.iter().all(|s| stmt_affine_in(s, inner_var));
        let body = if split == 0 {
            Body::Loops {
                grid,
                vector: true,
                body: stmts,
            }
        } else {
            Body::Loops {
                grid,
                vector: false,
                body: vec![Stmt::Loop {
                    var: inner_var,
                    vector: true,
                    body: stmts,
                }],
            }
        };
        Ok((body, affine))
    }
}

/// Row-major flat index of a multi-index into `shape`.
pub(crate) fn flatten(idx: &[Index], shape: &[usize]) -> Index {
    let mut flat = Index::Const(0);
    let mut stride = 1i64;
    for (i, &n) in idx.iter().zip(shape).rev() {
        flat = index::add(flat, index::mul(i.clone(), stride));
        stride *= n as i64;
    }
    flat
}

/// The multi-index into `shape` of a flat row-major index, innermost axis first peeled off.
pub(crate) fn unflatten(flat: &Index, shape: &[usize]) -> Vec<Index> {
    let mut out = vec![Index::Const(0); shape.len()];
    if shape.contains(&0) {
        // An empty shape has no element to index (its loop runs no iteration); the
        // remainders below would divide by its zero extent.
        return out;
    }
    let mut rest = flat.clone();
    for (i, &n) in shape.iter().enumerate().rev() {
        if i == 0 {
            out[0] = rest.clone();
        } else {
            out[i] = index::rem(rest.clone(), n as i64);
            rest = index::div(rest, n as i64);
        }
    }
    out
}

/// Whether every index in `s` is affine in `v`.
fn stmt_affine_in(s: &Stmt, v: Var) -> bool {
    let mut ok = true;
    let mut check_expr = |e: &Expr| {
        e.visit(&mut |x| match x {
            Expr::Load { index, .. } | Expr::Table { index, .. } | Expr::Scratch { index, .. } => {
                ok &= index.affine_coefficient(v).is_some();
            }
            Expr::Select { pred, .. } => {
                if let super::Pred::Index(c) = &**pred {
                    ok &= c.0.iter().all(|(_, a, b)| {
                        a.affine_coefficient(v).is_some() && b.affine_coefficient(v).is_some()
                    });
                }
            }
            _ => {}
        })
    };
    match s {
        Stmt::Let { value, .. } => check_expr(value),
        Stmt::Store { index, value, .. } | Stmt::ScratchStore { index, value, .. } => {
            check_expr(value);
            ok &= index.affine_coefficient(v).is_some();
        }
        Stmt::Loop { body, .. } => {
            ok = body.iter().all(|s| stmt_affine_in(s, v));
        }
    }
    ok
}
