//! Loop kernels on the GPU, in one of three shapes:
//! - one invocation per grid iteration, inner loops and reductions sequential in it;
//! - where the grid's body is a single vector loop (an elementwise group over rows), one
//!   invocation per (grid, vector) iteration pair, so that even a kernel with few rows fills
//!   the device;
//! - where an iteration reduces over many elements (a normalisation or softmax row, a
//!   global pool), or the grid is short and each iteration has wide independent work (a
//!   depthwise convolution + LayerNorm over a 7x7 map's 49 pixels), one workgroup per
//!   iteration ([`cooperative`]): its invocations share the reductions and split the
//!   independent loops, with a barrier wherever one statement reads what an earlier one
//!   wrote to the output. The iteration is the grid's, or, where the second shape's
//!   vector loop holds the reductions (a softmax over axis 0, a `layer_norm2d` over the
//!   channels of each pixel), a (grid, vector) pair's: one invocation would otherwise loop
//!   over a whole strided axis, tens of thousands of serial iterations for a long one,
//!   past what llvmpipe runs in one invocation (about 65,535).
//!
//! Scratch arrays are private to an invocation, so a kernel with scratch keeps the first
//! shape.

use super::source::{
    buffer_name, group_grid, group_index, linear_grid, linear_invocation, var_name, Printer, Ty,
    LINEAR_WORKGROUP,
};
use super::Emitted;
use crate::kernel::{Body, Expr, Index, Kernel, Stmt, Var};

/// Invocations per workgroup of a cooperative kernel. 128 is a multiple of both warp (32)
/// and wavefront (64) sizes and keeps the tree at 7 barrier steps, while rows of a few
/// hundred to a few thousand elements (hidden sizes, pooled feature maps) still give every
/// invocation several elements to accumulate before the first barrier.
const COOPERATIVE_WORKGROUP: u32 = 128;

/// The fewest elements, summed over the reductions of a grid iteration's top-level
/// statements, worth a workgroup: below this, one invocation per iteration keeps more of
/// the device busy.
const COOPERATIVE_MIN_ELEMENTS: usize = 256;

/// Grids shorter than this fill only a sliver of a GPU with one invocation per iteration
/// (a GPU runs tens of thousands at once), so there an iteration whose widest top-level
/// loop or reduction covers [`COOPERATIVE_MIN_WIDTH`] elements gets a workgroup too.
const FEW_ITERATIONS: usize = 4096;
const COOPERATIVE_MIN_WIDTH: usize = 64;

/// The source of a loop kernel. `printer` is fresh for `k`.
pub fn emit(mut p: Printer, entry: &str, bindings: &[bbc_runtime::gpu::BindingAccess]) -> Emitted {
    let k: &Kernel = p.kernel;
    let Body::Loops { grid, body, .. } = &k.body else {
        unreachable!("the caller dispatches on the body")
    };
    // The invocation index covers the grid, times the vector loop when it is all there is.
    let inner: Option<(Var, &[Stmt])> = match body.as_slice() {
        [Stmt::Loop {
            var,
            vector: true,
            body,
        }] => Some((*var, body.as_slice())),
        _ => None,
    };
    // A (grid, vector) pair whose body reduces gets a workgroup before the grid does: the
    // grid's workgroup would leave each invocation whole reductions to run alone (a softmax
    // over axis 0 loops over every row in one invocation).
    if let Some((v, rest)) = inner {
        let pair = [*grid, v];
        if reduced_elements_of(rest) > 0 && cooperative_applies(k, &pair, rest) {
            return cooperative(p, &pair, rest, entry, bindings);
        }
    }
    if cooperative_applies(k, &[*grid], body) {
        return cooperative(p, &[*grid], body, entry, bindings);
    }
    let total = grid.extent * inner.map_or(1, |(v, _)| v.extent);
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

/// Whether an iteration's body is worth a workgroup and safe to share. The iteration is
/// the grid's, or a (grid, vector loop) pair's (`outer`, outermost first). No scratch, every
/// top-level loop independent (each store in it indexed by the loop's variable) and reading
/// the output only at elements it stores itself (so only at elements its own invocation
/// writes), and either enough elements reduced at the top level or few iterations with wide
/// ones.
fn cooperative_applies(k: &Kernel, outer: &[Var], body: &[Stmt]) -> bool {
    if !k.scratch.is_empty() {
        return false;
    }
    let (mut reduced, mut width) = (0, 0);
    for s in body {
        match s {
            Stmt::Loop { var, body, .. } => {
                if !stores_indexed_by(body, *var) || !partitioned_by(body, k.output(), *var, outer)
                {
                    return false;
                }
                width = width.max(var.extent);
            }
            Stmt::Let { value, .. } | Stmt::Store { value, .. } => {
                let elements = reduced_elements(value);
                reduced += elements;
                width = width.max(elements);
            }
            Stmt::ScratchStore { .. } => return false,
        }
    }
    let iterations: usize = outer.iter().map(|v| v.extent).product();
    reduced >= COOPERATIVE_MIN_ELEMENTS
        || (iterations < FEW_ITERATIONS && width >= COOPERATIVE_MIN_WIDTH)
}

/// Elements reduced by the top-level statements of `body` (see [`reduced_elements`]).
fn reduced_elements_of(body: &[Stmt]) -> usize {
    body.iter()
        .map(|s| match s {
            Stmt::Let { value, .. } | Stmt::Store { value, .. } => reduced_elements(value),
            Stmt::Loop { .. } | Stmt::ScratchStore { .. } => 0,
        })
        .sum()
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

/// Every load of `buf` in `e`, by index.
fn loads_of(e: &Expr, buf: usize, found: &mut Vec<Index>) {
    e.visit(&mut |x| {
        if let Expr::Load { buf: b, index } = x {
            if *b == buf {
                found.push(index.clone());
            }
        }
    });
}

/// The indices `body` loads from (`stores == false`) or stores to `buf` at.
fn accesses(body: &[Stmt], buf: usize, stores: bool, found: &mut Vec<Index>) {
    for s in body {
        match s {
            Stmt::Loop { body, .. } => accesses(body, buf, stores, found),
            Stmt::Store {
                buf: b,
                index,
                value,
            } => {
                if stores && *b == buf {
                    found.push(index.clone());
                } else if !stores {
                    loads_of(value, buf, found);
                }
            }
            Stmt::Let { value, .. } | Stmt::ScratchStore { value, .. } => {
                if !stores {
                    loads_of(value, buf, found);
                }
            }
        }
    }
}

fn reads_buffer(body: &[Stmt], buf: usize) -> bool {
    let mut found = Vec::new();
    accesses(body, buf, false, &mut found);
    !found.is_empty()
}

fn writes_buffer(body: &[Stmt], buf: usize) -> bool {
    let mut found = Vec::new();
    accesses(body, buf, true, &mut found);
    !found.is_empty()
}

/// Whether the elements of `buf` that `body` reads or writes belong to one iteration of
/// loop `v` each, so that invocations sharing the loop's iterations never touch each
/// other's. Every such index must make `v` one digit of a mixed-radix position: `v · a`
/// (the same `a > 0` throughout) plus terms of the workgroup's own iteration variables
/// (`outer`, the same for a whole workgroup), terms whose coefficients are multiples of
/// `a · extent(v)` (higher digits) and variables with positive coefficients that together
/// stay below `a` (lower digits).
fn partitioned_by(body: &[Stmt], buf: usize, v: Var, outer: &[Var]) -> bool {
    let mut indices = Vec::new();
    accesses(body, buf, false, &mut indices);
    accesses(body, buf, true, &mut indices);
    let digit = |index: &Index| -> Option<i64> {
        let Index::Sum(terms, _) = index else {
            return (*index == Index::Var(v)).then_some(1);
        };
        let a = terms
            .iter()
            .find_map(|(t, k)| (*t == Index::Var(v)).then_some(*k))?;
        let radix = a * v.extent as i64;
        let mut lower = 0;
        for (t, k) in terms.iter().filter(|(t, _)| *t != Index::Var(v)) {
            if t.mentions(v) {
                return None;
            }
            if only_mentions(t, outer) || k % radix == 0 {
                continue;
            }
            match t {
                Index::Var(u) if *k > 0 => lower += k * (u.extent as i64 - 1),
                _ => return None,
            }
        }
        (a > 0 && lower < a).then_some(a)
    };
    let mut coefficients = indices.iter().map(digit);
    match coefficients.next() {
        None => true,
        Some(first) => first.is_some() && coefficients.all(|a| a == first),
    }
}

/// Whether `t` depends on no variables but `outer`.
fn only_mentions(t: &Index, outer: &[Var]) -> bool {
    let mut vars = Vec::new();
    collect_vars(t, &mut vars);
    vars.iter().all(|x| outer.contains(x))
}

fn collect_vars(t: &Index, out: &mut Vec<Var>) {
    match t {
        Index::Const(_) => {}
        Index::Var(v) => out.push(*v),
        Index::Sum(terms, _) => terms.iter().for_each(|(t, _)| collect_vars(t, out)),
        Index::Div(x, _) | Index::Rem(x, _) | Index::Lookup(_, x) => collect_vars(x, out),
        Index::Min(a, b) | Index::Max(a, b) => {
            collect_vars(a, out);
            collect_vars(b, out);
        }
    }
}

fn stores_indexed_by(body: &[Stmt], v: Var) -> bool {
    body.iter().all(|s| match s {
        Stmt::Loop { body, .. } => stores_indexed_by(body, v),
        Stmt::Store { index, .. } | Stmt::ScratchStore { index, .. } => index.mentions(v),
        Stmt::Let { .. } => true,
    })
}

/// One workgroup per iteration of `outer` (the grid, or a grid and vector loop pair).
/// Every invocation runs the top-level statements, so the barriers of the cooperative
/// reductions are reached in uniform control flow (an out-of-range workgroup leaves as a
/// whole); top-level loops stride their iterations over the invocations, a top-level
/// store outside a loop is written by invocation 0.
fn cooperative(
    mut p: Printer,
    outer: &[Var],
    body: &[Stmt],
    entry: &str,
    bindings: &[bbc_runtime::gpu::BindingAccess],
) -> Emitted {
    let n = COOPERATIVE_WORKGROUP;
    let iterations: usize = outer.iter().map(|v| v.extent).product();
    let groups = group_grid(iterations);
    p.declare_partials(n);
    let flat = match outer {
        [grid] => {
            p.bind_var(1, *grid, &group_index(groups));
            var_name(*grid)
        }
        _ => {
            let decl = p.syntax.constant(Ty::I32, "gid", &group_index(groups));
            p.line(1, &decl);
            "gid".to_string()
        }
    };
    if groups[1] > 1 {
        let exit = p.syntax.exit();
        p.line(1, &format!("if ({flat} >= {iterations}) {{ {exit} }}"));
    }
    if outer.len() > 1 {
        // Mixed-radix digits of the flat index, outermost first.
        let mut below = iterations;
        for (i, v) in outer.iter().enumerate() {
            below /= v.extent;
            let quotient = match below {
                1 => flat.clone(),
                _ => format!("({flat} / {below})"),
            };
            let digit = match i {
                0 => quotient,
                _ => format!("({quotient} % {})", v.extent),
            };
            p.bind_var(1, *v, &digit);
        }
    }
    // Storage writes and reads of the output since the last barrier: a statement that
    // reads what another invocation may have written, or writes what another may still be
    // reading, waits at a barrier first (top-level statements run in uniform control flow).
    let (out, barrier) = (p.kernel.output(), p.syntax.storage_barrier());
    let (mut written, mut read) = (false, false);
    for s in body {
        let one = std::slice::from_ref(s);
        let (reads, writes) = (reads_buffer(one, out), writes_buffer(one, out));
        if (written && reads) || (read && writes) {
            p.line(1, barrier);
            (written, read) = (false, false);
        }
        written |= writes;
        read |= reads;
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
