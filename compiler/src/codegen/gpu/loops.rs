//! Loop kernels on the GPU, in one of three shapes:
//! - one invocation per grid iteration, inner loops and reductions sequential in it;
//! - where the grid's body is a single vector loop (an elementwise group over rows), one
//!   invocation per (grid, vector) iteration pair, so that even a kernel with few rows fills
//!   the device;
//! - where a grid iteration reduces over many elements (a normalisation or softmax row, a
//!   global pool), one workgroup per grid iteration ([`cooperative`]): its invocations share
//!   the reductions and split the independent loops after them.
//!
//! Scratch arrays are private to an invocation, so a kernel with scratch keeps the first
//! shape.

use super::source::{
    buffer_name, group_grid, group_index, linear_grid, linear_invocation, var_name, Printer, Ty,
    LINEAR_WORKGROUP,
};
use super::Emitted;
use crate::kernel::{Body, Expr, Kernel, Stmt, Var};

/// Invocations per workgroup of a cooperative kernel. 128 is a multiple of both warp (32)
/// and wavefront (64) sizes and keeps the tree at 7 barrier steps, while rows of a few
/// hundred to a few thousand elements (hidden sizes, pooled feature maps) still give every
/// invocation several elements to accumulate before the first barrier.
const COOPERATIVE_WORKGROUP: u32 = 128;

/// The fewest elements, summed over the reductions of a grid iteration's top-level
/// statements, worth a workgroup: below this, one invocation per iteration keeps more of
/// the device busy.
const COOPERATIVE_MIN_ELEMENTS: usize = 256;

/// The source of a loop kernel. `printer` is fresh for `k`.
pub fn emit(mut p: Printer, entry: &str, bindings: &[bbc_runtime::gpu::BindingAccess]) -> Emitted {
    let k: &Kernel = p.kernel;
    let Body::Loops { grid, body, .. } = &k.body else {
        unreachable!("the caller dispatches on the body")
    };
    if cooperative_applies(k, body) {
        return cooperative(p, *grid, body, entry, bindings);
    }
    // The invocation index covers the grid, times the vector loop when it is all there is.
    let (total, inner): (usize, Option<(Var, &[Stmt])>) = match body.as_slice() {
        [Stmt::Loop {
            var,
            vector: true,
            body,
        }] => (grid.extent * var.extent, Some((*var, body.as_slice()))),
        _ => (grid.extent, None),
    };
    linear_invocation(&mut p, total);
    match inner {
        Some((v, rest)) => {
            p.bind_var(1, *grid, &format!("(gid / {})", v.extent));
            p.bind_var(1, v, &format!("(gid % {})", v.extent));
            p.scratch_arrays(1);
            p.stmts(1, rest);
        }
        None => {
            let gid = p.syntax.constant(Ty::I32, &var_name(*grid), "gid");
            p.line(1, &gid);
            p.scratch_arrays(1);
            p.stmts(1, body);
        }
    }
    let workgroup = [LINEAR_WORKGROUP, 1, 1];
    let lines = p.syntax.entry(entry, bindings, workgroup);
    Emitted {
        source: p.finish(lines),
        workgroup,
        grid: linear_grid(total),
    }
}

/// Whether a grid iteration's body is worth a workgroup and safe to share: enough elements
/// reduced at its top level, no scratch, no read of the output (a loop split across
/// invocations could read an element another has not written yet), and every top-level
/// loop independent (each store in it indexed by the loop's variable).
fn cooperative_applies(k: &Kernel, body: &[Stmt]) -> bool {
    if !k.scratch.is_empty() || reads_buffer(body, k.output()) {
        return false;
    }
    let mut reduced = 0;
    for s in body {
        match s {
            Stmt::Loop { var, body, .. } => {
                if !stores_indexed_by(body, *var) {
                    return false;
                }
            }
            Stmt::Let { value, .. } | Stmt::Store { value, .. } => {
                reduced += reduced_elements(value)
            }
            Stmt::ScratchStore { .. } => return false,
        }
    }
    reduced >= COOPERATIVE_MIN_ELEMENTS
}

/// Elements reduced by the reductions of `e` (nested ones count once per element of the
/// reduction they sit in: a rough measure of the work).
fn reduced_elements(e: &Expr) -> usize {
    let mut total = 0;
    e.visit(&mut |x| {
        if let Expr::Reduce { vars, .. } = x {
            total += vars.iter().map(|v| v.extent).product::<usize>();
        }
    });
    total
}

fn reads_buffer(body: &[Stmt], buf: usize) -> bool {
    let in_expr = |e: &Expr| {
        let mut found = false;
        e.visit(&mut |x| found |= matches!(x, Expr::Load { buf: b, .. } if *b == buf));
        found
    };
    body.iter().any(|s| match s {
        Stmt::Loop { body, .. } => reads_buffer(body, buf),
        Stmt::Let { value, .. } | Stmt::Store { value, .. } | Stmt::ScratchStore { value, .. } => {
            in_expr(value)
        }
    })
}

fn stores_indexed_by(body: &[Stmt], v: Var) -> bool {
    body.iter().all(|s| match s {
        Stmt::Loop { body, .. } => stores_indexed_by(body, v),
        Stmt::Store { index, .. } | Stmt::ScratchStore { index, .. } => index.mentions(v),
        Stmt::Let { .. } => true,
    })
}

/// One workgroup per grid iteration. Every invocation runs the top-level statements, so
/// the barriers of the cooperative reductions are reached in uniform control flow (an
/// out-of-range workgroup leaves as a whole); top-level loops stride their iterations over
/// the invocations, a top-level store outside a loop is written by invocation 0.
fn cooperative(
    mut p: Printer,
    grid: Var,
    body: &[Stmt],
    entry: &str,
    bindings: &[bbc_runtime::gpu::BindingAccess],
) -> Emitted {
    let n = COOPERATIVE_WORKGROUP;
    let groups = group_grid(grid.extent);
    p.declare_partials(n);
    p.bind_var(1, grid, &group_index(groups));
    if groups[1] > 1 {
        let exit = p.syntax.exit();
        let name = var_name(grid);
        p.line(1, &format!("if ({name} >= {}) {{ {exit} }}", grid.extent));
    }
    for s in body {
        match s {
            Stmt::Loop { var, body, .. } => {
                // Reductions inside run sequentially for their own iteration.
                p.cooperate(None);
                let open = p.syntax.for_open(
                    &var_name(*var),
                    "lid_x",
                    &var.extent.to_string(),
                    n as usize,
                );
                p.line(1, &open);
                p.stmts(2, body);
                p.line(1, "}");
            }
            Stmt::Store { buf, index, value } => {
                p.cooperate(Some(n));
                let v = p.expr(1, value);
                let at = p.index(index);
                p.line(
                    1,
                    &format!("if (lid_x == 0) {{ {}[{at}] = {v}; }}", buffer_name(*buf)),
                );
            }
            Stmt::Let { .. } | Stmt::ScratchStore { .. } => {
                p.cooperate(Some(n));
                p.stmt(1, s);
            }
        }
    }
    p.cooperate(None);
    let workgroup = [n, 1, 1];
    let lines = p.syntax.entry(entry, bindings, workgroup);
    Emitted {
        source: p.finish(lines),
        workgroup,
        grid: groups,
    }
}
