//! Loop kernels on the GPU: one invocation per grid iteration, or, where the grid's body is
//! a single vector loop (an elementwise group over rows), one per (grid, vector) iteration
//! pair, so that even a kernel with few rows fills the device. Inner loops and reductions
//! run sequentially in their invocation; scratch arrays are private to it.

use super::source::{linear_grid, linear_invocation, var_name, Printer, Ty, LINEAR_WORKGROUP};
use super::Emitted;
use crate::kernel::{Body, Kernel, Stmt, Var};

/// The source of a loop kernel. `printer` is fresh for `k`.
pub fn emit(mut p: Printer, entry: &str, bindings: &[bbc_runtime::gpu::BindingAccess]) -> Emitted {
    let k: &Kernel = p.kernel;
    let Body::Loops { grid, body, .. } = &k.body else {
        unreachable!("the caller dispatches on the body")
    };
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
